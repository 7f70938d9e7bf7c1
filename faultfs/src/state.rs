//! The volatile state: the tree processes see, kept in the backing directory, plus the
//! bookkeeping that lets a sync copy only what changed and a cut find every stale handle.
//!
//! Every FUSE operation is one method here, on plain `io::Result`s; `fs.rs` only translates.
//! Invariants:
//! - The backing directory is changed only through these methods while mounted, so the inode
//!   table (names, entries) mirrors it exactly.
//! - Inode and handle numbers are never reused, across cuts too: an inode or handle this table
//!   does not know was valid before the last cut, and every operation on it answers `EIO`
//!   (the process that held it is considered dead).
//! - For a file, every byte outside `dirty` and below `min_size` equals its durable copy.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{lchown, symlink, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::libc;

use crate::durable::{Durable, Kind, Node, Survivor, ROOT};
use crate::ranges::Ranges;

#[derive(Debug)]
struct Inode {
    kind: Kind,
    /// Every name of the inode as (parent, name); several after `link`, none once unlinked
    /// (it then lives on only through open handles).
    links: Vec<(u64, OsString)>,
    /// Directories: the names they hold now.
    entries: BTreeMap<OsString, u64>,
    /// Files: bytes written since the last fsync/fdatasync.
    dirty: Ranges,
    /// Files: the smallest size since the last sync; the durable copy is cut there at the next.
    min_size: u64,
}

impl Inode {
    fn new(kind: Kind, size: u64) -> Inode {
        Inode { kind, links: Vec::new(), entries: BTreeMap::new(), dirty: Ranges::default(), min_size: size }
    }
}

#[derive(Debug)]
struct Handle {
    ino: u64,
    /// Files: the backing file, opened read-write whatever the process asked (the kernel checks
    /// the access mode), so a sync can read what a write-only handle wrote.
    file: Option<File>,
    /// Directories: the entries at opendir, so a listing read in several calls stays coherent.
    listing: Vec<(u64, Kind, OsString)>,
}

/// What a file attribute needs besides the metadata: our inode number.
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub meta: fs::Metadata,
}

#[derive(Debug)]
pub struct State {
    backing: PathBuf,
    durable: Durable,
    inodes: HashMap<u64, Inode>,
    handles: HashMap<u64, Handle>,
    next_ino: u64,
    next_fh: u64,
    /// Power cuts so far.
    pub cuts: u64,
}

fn stale() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl State {
    /// Takes the backing directory as it is now as durable (it is what the disk holds).
    pub fn new(backing: &Path, mut durable: Durable) -> io::Result<State> {
        let mut next_ino = ROOT + 1;
        let mut survivors = Vec::new();
        let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
        let mut pending = vec![(ROOT, backing.to_path_buf())];
        while let Some((dir, path)) = pending.pop() {
            for entry in fs::read_dir(&path)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                let (kind, id) = match seen.get(&(meta.dev(), meta.ino())) {
                    Some(&id) if !meta.is_dir() => (kind_of(&meta)?, id),
                    _ => {
                        let id = next_ino;
                        next_ino += 1;
                        seen.insert((meta.dev(), meta.ino()), id);
                        let kind = kind_of(&meta)?;
                        let mode = meta.mode() & 0o7777;
                        match kind {
                            Kind::File => durable.adopt(id, Node::File { mode }, Some(&entry.path()))?,
                            Kind::Symlink => {
                                durable.adopt(id, Node::Symlink { target: fs::read_link(entry.path())? }, None)?
                            }
                            Kind::Dir => pending.push((id, entry.path())),
                        }
                        (kind, id)
                    }
                };
                survivors.push(Survivor { id, parent: dir, name: entry.file_name(), kind, size: meta.len() });
            }
        }
        let mut state = State {
            backing: backing.to_path_buf(),
            durable,
            inodes: HashMap::new(),
            handles: HashMap::new(),
            next_ino,
            next_fh: 1,
            cuts: 0,
        };
        state.rebuild(&survivors);
        // Directories become durable once the table knows their entries.
        let dirs = std::iter::once(ROOT).chain(survivors.iter().filter(|s| s.kind == Kind::Dir).map(|s| s.id));
        for id in dirs {
            let mode = fs::metadata(state.path(id)?)?.mode() & 0o7777;
            let entries = state.inodes[&id].entries.clone();
            state.durable.adopt(id, Node::Dir { mode, entries }, None)?;
        }
        Ok(state)
    }

    /// The power cut: every handle and inode of before is dropped (their users get `EIO`), and
    /// the backing directory becomes the durable state. Returns how many names survived.
    pub fn power_cut(&mut self) -> io::Result<usize> {
        self.cuts += 1;
        self.handles.clear();
        let survivors = self.durable.materialize(&self.backing, &mut self.next_ino)?;
        self.rebuild(&survivors);
        Ok(survivors.len())
    }

    /// At a clean unmount the volatile state stays in the backing directory; the store goes.
    pub fn remove_store(&self) -> io::Result<()> {
        self.durable.remove()
    }

    fn rebuild(&mut self, survivors: &[Survivor]) {
        self.inodes.clear();
        self.inodes.insert(ROOT, Inode::new(Kind::Dir, 0));
        for s in survivors {
            let inode = self.inodes.entry(s.id).or_insert_with(|| Inode::new(s.kind, s.size));
            inode.links.push((s.parent, s.name.clone()));
            if let Some(parent) = self.inodes.get_mut(&s.parent) {
                parent.entries.insert(s.name.clone(), s.id);
            }
        }
    }

    fn inode(&self, ino: u64) -> io::Result<&Inode> {
        self.inodes.get(&ino).ok_or_else(stale)
    }

    fn inode_mut(&mut self, ino: u64) -> io::Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or_else(stale)
    }

    fn handle(&self, fh: u64) -> io::Result<&Handle> {
        self.handles.get(&fh).ok_or_else(stale)
    }

    /// `EIO` for a handle opened before the last cut.
    pub fn check_handle(&self, fh: u64) -> io::Result<()> {
        self.handle(fh).map(|_| ())
    }

    fn file(&self, fh: u64) -> io::Result<&File> {
        self.handle(fh)?.file.as_ref().ok_or_else(|| errno(libc::EISDIR))
    }

    /// The backing path of `ino` through its first name.
    fn path(&self, ino: u64) -> io::Result<PathBuf> {
        if ino == ROOT {
            return Ok(self.backing.clone());
        }
        let (parent, name) = self.inode(ino)?.links.first().ok_or_else(|| errno(libc::ENOENT))?;
        Ok(self.path(*parent)?.join(name))
    }

    fn child(&self, parent: u64, name: &OsStr) -> io::Result<u64> {
        let dir = self.inode(parent)?;
        if dir.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        dir.entries.get(name).copied().ok_or_else(|| errno(libc::ENOENT))
    }

    fn add_child(&mut self, parent: u64, name: &OsStr, kind: Kind) -> io::Result<Attr> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut inode = Inode::new(kind, 0);
        inode.links.push((parent, name.to_os_string()));
        self.inodes.insert(ino, inode);
        self.inode_mut(parent)?.entries.insert(name.to_os_string(), ino);
        self.getattr(ino)
    }

    pub fn getattr(&self, ino: u64) -> io::Result<Attr> {
        let inode = self.inode(ino)?;
        let meta = match self.path(ino) {
            Ok(path) => fs::symlink_metadata(path)?,
            // Unlinked but open: the open handle still reaches it.
            Err(_) => {
                let open = self.handles.values().find(|h| h.ino == ino).and_then(|h| h.file.as_ref());
                open.ok_or_else(|| errno(libc::ENOENT))?.metadata()?
            }
        };
        Ok(Attr { ino, kind: inode.kind, meta })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Attr> {
        self.getattr(self.child(parent, name)?)
    }

    /// chmod, chown, truncate and utimes; only `size` matters to the model.
    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &mut self,
        ino: u64,
        fh: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        times: (Option<std::time::SystemTime>, Option<std::time::SystemTime>),
    ) -> io::Result<Attr> {
        let path = self.path(ino);
        let kind = self.inode(ino)?.kind;
        if let Some(mode) = mode {
            fs::set_permissions(path.as_ref().map_err(clone_err)?, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if uid.is_some() || gid.is_some() {
            lchown(path.as_ref().map_err(clone_err)?, uid, gid)?;
        }
        if let Some(size) = size {
            match fh.and_then(|fh| self.handles.get(&fh)).and_then(|h| h.file.as_ref()) {
                Some(file) => file.set_len(size)?,
                None => OpenOptions::new().write(true).open(path.as_ref().map_err(clone_err)?)?.set_len(size)?,
            }
            let inode = self.inode_mut(ino)?;
            inode.min_size = inode.min_size.min(size);
        }
        if (times.0.is_some() || times.1.is_some()) && kind != Kind::Symlink {
            let mut set = fs::FileTimes::new();
            if let Some(atime) = times.0 {
                set = set.set_accessed(atime);
            }
            if let Some(mtime) = times.1 {
                set = set.set_modified(mtime);
            }
            File::open(path.as_ref().map_err(clone_err)?)?.set_times(set)?;
        }
        self.getattr(ino)
    }

    pub fn readlink(&self, ino: u64) -> io::Result<PathBuf> {
        fs::read_link(self.path(ino)?)
    }

    /// Regular files only: sled and the collector make nothing else.
    pub fn mknod(&mut self, parent: u64, name: &OsStr, mode: u32) -> io::Result<Attr> {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(errno(libc::EPERM));
        }
        let path = self.path(parent)?.join(name);
        OpenOptions::new().write(true).create_new(true).mode(mode & 0o7777).open(path)?;
        self.add_child(parent, name, Kind::File)
    }

    pub fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> io::Result<Attr> {
        let path = self.path(parent)?.join(name);
        fs::create_dir(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        self.add_child(parent, name, Kind::Dir)
    }

    pub fn symlink(&mut self, parent: u64, name: &OsStr, target: &Path) -> io::Result<Attr> {
        symlink(target, self.path(parent)?.join(name))?;
        self.add_child(parent, name, Kind::Symlink)
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> io::Result<Attr> {
        fs::hard_link(self.path(ino)?, self.path(parent)?.join(name))?;
        self.inode_mut(ino)?.links.push((parent, name.to_os_string()));
        self.inode_mut(parent)?.entries.insert(name.to_os_string(), ino);
        self.getattr(ino)
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr, dir: bool) -> io::Result<()> {
        let ino = self.child(parent, name)?;
        let path = self.path(parent)?.join(name);
        if dir {
            fs::remove_dir(path)?;
        } else {
            fs::remove_file(path)?;
        }
        self.forget_name(parent, name, ino)
    }

    fn forget_name(&mut self, parent: u64, name: &OsStr, ino: u64) -> io::Result<()> {
        self.inode_mut(parent)?.entries.remove(name);
        self.inode_mut(ino)?.links.retain(|(p, n)| !(*p == parent && n == name));
        Ok(())
    }

    pub fn rename(&mut self, parent: u64, name: &OsStr, to: u64, to_name: &OsStr, noreplace: bool) -> io::Result<()> {
        let ino = self.child(parent, name)?;
        let replaced = self.child(to, to_name).ok();
        if noreplace && replaced.is_some() {
            return Err(errno(libc::EEXIST));
        }
        fs::rename(self.path(parent)?.join(name), self.path(to)?.join(to_name))?;
        if replaced == Some(ino) {
            return Ok(()); // two names of one file: rename(2) does nothing
        }
        if let Some(old) = replaced {
            self.forget_name(to, to_name, old)?;
        }
        self.forget_name(parent, name, ino)?;
        self.inode_mut(to)?.entries.insert(to_name.to_os_string(), ino);
        self.inode_mut(ino)?.links.push((to, to_name.to_os_string()));
        Ok(())
    }

    pub fn open(&mut self, ino: u64, truncate: bool) -> io::Result<u64> {
        let file = OpenOptions::new().read(true).write(true).truncate(truncate).open(self.path(ino)?)?;
        if truncate {
            self.inode_mut(ino)?.min_size = 0;
        }
        Ok(self.new_handle(ino, Some(file), Vec::new()))
    }

    pub fn create(&mut self, parent: u64, name: &OsStr, mode: u32) -> io::Result<(Attr, u64)> {
        let path = self.path(parent)?.join(name);
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(mode & 0o7777).open(path)?;
        let attr = self.add_child(parent, name, Kind::File)?;
        let fh = self.new_handle(attr.ino, Some(file), Vec::new());
        Ok((attr, fh))
    }

    fn new_handle(&mut self, ino: u64, file: Option<File>, listing: Vec<(u64, Kind, OsString)>) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, file, listing });
        fh
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let file = self.file(fh)?;
        let mut buf = vec![0; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(buf)
    }

    pub fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> io::Result<usize> {
        self.file(fh)?.write_all_at(data, offset)?;
        let ino = self.handle(fh)?.ino;
        self.inode_mut(ino)?.dirty.insert(offset, offset + data.len() as u64);
        Ok(data.len())
    }

    pub fn fallocate(&mut self, fh: u64, offset: u64, length: u64, mode: i32) -> io::Result<()> {
        let file = self.file(fh)?;
        let flags = nix::fcntl::FallocateFlags::from_bits_retain(mode);
        let (off, len) = (i64::try_from(offset), i64::try_from(length));
        let (Ok(off), Ok(len)) = (off, len) else { return Err(errno(libc::EINVAL)) };
        nix::fcntl::fallocate(file, flags, off, len).map_err(|e| errno(e as i32))?;
        let size = file.metadata()?.len();
        let ino = self.handle(fh)?.ino;
        let inode = self.inode_mut(ino)?;
        // Collapse and insert shift every byte after `offset`; the others touch only the range.
        let shifts = mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0;
        inode.dirty.insert(offset, if shifts { u64::MAX } else { offset.saturating_add(length) });
        inode.min_size = inode.min_size.min(size);
        Ok(())
    }

    pub fn release(&mut self, fh: u64) {
        self.handles.remove(&fh);
    }

    /// fsync (`datasync` false) or fdatasync of the file behind `fh`.
    pub fn fsync(&mut self, fh: u64, datasync: bool) -> io::Result<()> {
        let handle = self.handles.get(&fh).ok_or_else(stale)?;
        let file = handle.file.as_ref().ok_or_else(|| errno(libc::EISDIR))?;
        let inode = self.inodes.get_mut(&handle.ino).ok_or_else(stale)?;
        let meta = file.metadata()?;
        let size = meta.len();
        self.durable.sync_file(
            handle.ino,
            file,
            &inode.dirty,
            inode.min_size,
            size,
            meta.mode() & 0o7777,
            !datasync,
        )?;
        inode.dirty.clear();
        inode.min_size = size;
        Ok(())
    }

    pub fn opendir(&mut self, ino: u64) -> io::Result<u64> {
        let dir = self.inode(ino)?;
        if dir.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        let parent = dir.links.first().map_or(ROOT, |(p, _)| *p);
        let mut listing = vec![(ino, Kind::Dir, OsString::from(".")), (parent, Kind::Dir, OsString::from(".."))];
        for (name, &child) in &dir.entries {
            listing.push((child, self.inode(child)?.kind, name.clone()));
        }
        Ok(self.new_handle(ino, None, listing))
    }

    /// The listing taken at opendir, from entry `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> io::Result<&[(u64, Kind, OsString)]> {
        let listing = &self.handle(fh)?.listing;
        Ok(listing.get(offset as usize..).unwrap_or(&[]))
    }

    /// fsyncdir: the directory's entries, as they are now, become durable.
    pub fn fsyncdir(&mut self, ino: u64) -> io::Result<()> {
        let dir = self.inode(ino)?;
        // A removed directory has no path; its (empty) entries are still what a disk would hold.
        let mode = self.path(ino).and_then(fs::symlink_metadata).map_or(0o755, |m| m.mode() & 0o7777);
        let mut entries = Vec::with_capacity(dir.entries.len());
        for (name, &child) in &dir.entries {
            let fresh = if self.durable.contains(child) {
                Node::File { mode: 0 } // unused: the child is durable already
            } else {
                let path = self.path(ino)?.join(name);
                let child_mode = fs::symlink_metadata(&path)?.mode() & 0o7777;
                match self.inode(child)?.kind {
                    Kind::File => Node::File { mode: child_mode },
                    Kind::Dir => Node::Dir { mode: child_mode, entries: BTreeMap::new() },
                    Kind::Symlink => Node::Symlink { target: fs::read_link(&path)? },
                }
            };
            entries.push((name.clone(), child, fresh));
        }
        self.durable.sync_dir(ino, mode, entries)
    }

    pub fn statfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::statvfs(&self.backing).map_err(|e| errno(e as i32))
    }
}

fn kind_of(meta: &fs::Metadata) -> io::Result<Kind> {
    let t = meta.file_type();
    if t.is_file() {
        Ok(Kind::File)
    } else if t.is_dir() {
        Ok(Kind::Dir)
    } else if t.is_symlink() {
        Ok(Kind::Symlink)
    } else {
        Err(io::Error::new(io::ErrorKind::Unsupported, "faultfs holds regular files, directories and symlinks only"))
    }
}

fn clone_err(e: &io::Error) -> io::Error {
    e.raw_os_error().map_or_else(|| io::Error::new(e.kind(), e.to_string()), io::Error::from_raw_os_error)
}
