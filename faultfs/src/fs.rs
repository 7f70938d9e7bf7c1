//! The FUSE adapter: each kernel request becomes one `State` call under one lock, and its
//! `io::Error` becomes the errno the process sees.
//!
//! Two choices make the model observable from outside:
//! - Attributes and entries are cached for zero seconds, so after a cut every path is looked up
//!   again and lands on the renumbered inodes, while the kernel's old inodes keep asking us (and
//!   get `EIO`).
//! - Every file is opened `direct_io`: no page cache, so each write reaches us when it is made
//!   (not at some later writeback) and a read after a cut cannot be served from stale pages.
//!   The price: shared writable `mmap` is refused (`ENODEV`), which sled does not use.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use nix::libc;

use crate::durable::Kind;
use crate::state::{Attr, State};

const TTL: Duration = Duration::ZERO;

pub struct FaultFs {
    /// Shared with the power-cut handle: a cut takes the same lock, so it falls between two
    /// operations, never inside one.
    pub(crate) state: Arc<Mutex<State>>,
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = u32::try_from(nsecs).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, nanos),
        Err(_) => UNIX_EPOCH,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    use std::os::unix::fs::MetadataExt;
    let m = &attr.meta;
    FileAttr {
        ino: INodeNo(attr.ino),
        size: m.len(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: file_type(attr.kind),
        perm: (m.mode() & 0o7777) as u16,
        nlink: u32::try_from(m.nlink()).unwrap_or(u32::MAX),
        uid: m.uid(),
        gid: m.gid(),
        rdev: u32::try_from(m.rdev()).unwrap_or(0),
        blksize: 4096,
        flags: 0,
    }
}

fn when(t: Option<TimeOrNow>) -> Option<SystemTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    })
}

impl FaultFs {
    /// The state, or `None` if an operation panicked while holding it (then every later
    /// operation answers `EIO` rather than act on a half-updated table).
    fn state(&self) -> Option<MutexGuard<'_, State>> {
        self.state.lock().ok()
    }
}

/// Runs `$op` on the locked state and answers with `$ok` or the error's errno.
macro_rules! with_state {
    ($self:ident, $reply:ident, |$s:ident| $op:expr, |$v:pat_param| $ok:expr) => {{
        let Some(mut guard) = $self.state() else { return $reply.error(Errno::EIO) };
        #[allow(unused_mut)]
        let $s: &mut State = &mut guard;
        match $op {
            Ok($v) => $ok,
            Err(e) => $reply.error(errno(&e)),
        }
    }};
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        with_state!(self, reply, |s| s.lookup(parent.0, name), |a| reply.entry(&TTL, &file_attr(&a), Generation(0)))
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        with_state!(self, reply, |s| s.getattr(ino.0), |a| reply.attr(&TTL, &file_attr(&a)))
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let times = (when(atime), when(mtime));
        with_state!(self, reply, |s| s.setattr(ino.0, fh.map(|f| f.0), mode, uid, gid, size, times), |a| reply
            .attr(&TTL, &file_attr(&a)))
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        use std::os::unix::ffi::OsStrExt;
        with_state!(self, reply, |s| s.readlink(ino.0), |t| reply.data(t.as_os_str().as_bytes()))
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        with_state!(self, reply, |s| s.mknod(parent.0, name, mode & !umask), |a| reply.entry(
            &TTL,
            &file_attr(&a),
            Generation(0)
        ))
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        with_state!(self, reply, |s| s.mkdir(parent.0, name, mode & !umask), |a| reply.entry(
            &TTL,
            &file_attr(&a),
            Generation(0)
        ))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        with_state!(self, reply, |s| s.unlink(parent.0, name, false), |()| reply.ok())
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        with_state!(self, reply, |s| s.unlink(parent.0, name, true), |()| reply.ok())
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        with_state!(self, reply, |s| s.symlink(parent.0, link_name, target), |a| reply.entry(
            &TTL,
            &file_attr(&a),
            Generation(0)
        ))
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // RENAME_EXCHANGE and RENAME_WHITEOUT are not modelled.
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        with_state!(self, reply, |s| s.rename(parent.0, name, newparent.0, newname, noreplace), |()| reply.ok())
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        with_state!(self, reply, |s| s.link(ino.0, newparent.0, newname), |a| reply.entry(
            &TTL,
            &file_attr(&a),
            Generation(0)
        ))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let truncate = flags.0 & libc::O_TRUNC != 0;
        with_state!(self, reply, |s| s.open(ino.0, truncate), |fh| reply
            .opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO))
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        with_state!(self, reply, |s| s.read(fh.0, offset, size), |data| reply.data(&data))
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        with_state!(self, reply, |s| s.write(fh.0, offset, data), |n| reply.written(n as u32))
    }

    /// close(2) is not a durability point: nothing to do.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: fuser::LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // A handle of before a cut is gone already; releasing it is not an error.
        if let Some(mut s) = self.state() {
            s.release(fh.0);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        with_state!(self, reply, |s| s.fsync(fh.0, datasync), |()| reply.ok())
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        with_state!(self, reply, |s| s.opendir(ino.0), |fh| reply.opened(FileHandle(fh), FopenFlags::empty()))
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(guard) = self.state() else { return reply.error(Errno::EIO) };
        match guard.readdir(fh.0, offset) {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.iter().enumerate() {
                    // The offset given is the one of the next entry.
                    if reply.add(INodeNo(*ino), offset + i as u64 + 1, file_type(*kind), name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        // A handle of before a cut is gone already; releasing it is not an error.
        if let Some(mut s) = self.state() {
            s.release(fh.0);
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        with_state!(self, reply, |s| s.check_handle(fh.0).and_then(|()| s.fsyncdir(ino.0)), |()| reply.ok())
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        with_state!(self, reply, |s| s.statfs(), |v| reply.statfs(
            v.blocks(),
            v.blocks_free(),
            v.blocks_available(),
            v.files(),
            v.files_free(),
            v.block_size() as u32,
            v.name_max() as u32,
            v.fragment_size() as u32
        ))
    }

    /// Root mounts it and the backing directory decides: no checks of our own.
    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        with_state!(self, reply, |s| s.getattr(ino.0), |_a| reply.ok())
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        with_state!(self, reply, |s| s.create(parent.0, name, mode & !umask), |(a, fh)| reply.created(
            &TTL,
            &file_attr(&a),
            Generation(0),
            FileHandle(fh),
            FopenFlags::FOPEN_DIRECT_IO
        ))
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        with_state!(self, reply, |s| s.fallocate(fh.0, offset, length, mode), |()| reply.ok())
    }
}
