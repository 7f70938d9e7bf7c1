//! The durable state: what a disk would hold if the power were cut now.
//!
//! Nodes are keyed by the volatile inode number they were made durable from, so a rename or a
//! hard link keeps its identity. A file's durable bytes live in the store directory as one file
//! named after its id; a directory's durable entries, a symlink's target and the modes live in
//! memory. Nothing here is read back by the program under test: the store is only written at
//! `fsync`/`fdatasync`/`fsyncdir` and read at a power cut.
//!
//! Rules (the model; README.md states it for users):
//! - `sync_file` makes the file's bytes and size durable, copying only the byte ranges written
//!   since the last sync. Its mode becomes durable too when `metadata` is set (`fsync`, not
//!   `fdatasync`).
//! - `sync_dir` makes a directory's entries durable: exactly the names it holds now. A child that
//!   was never made durable itself enters as an empty file, an empty directory or its symlink.
//! - A node no durable directory names (a file fsynced but never linked durably, or unlinked
//!   durably) is dropped at the cut.
//! - `materialize` rewrites the backing directory to the durable tree and renumbers every node,
//!   so that no inode number of before the cut names anything after it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ranges::Ranges;

/// The root directory's id, in the durable and the volatile state alike, across every cut.
pub const ROOT: u64 = 1;

/// A file that marks a store directory as ours, so a leftover store may be cleared at mount.
const MARKER: &str = ".faultfs-store";

/// Bytes copied per read when a sync copies a dirty range.
const COPY_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone)]
pub enum Node {
    File { mode: u32 },
    Dir { mode: u32, entries: BTreeMap<OsString, u64> },
    Symlink { target: PathBuf },
}

/// One name in the tree a cut left behind, listed parents first.
#[derive(Debug)]
pub struct Survivor {
    pub id: u64,
    pub parent: u64,
    pub name: OsString,
    pub kind: Kind,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug)]
pub struct Durable {
    /// Where durable file bytes live, one file per id.
    store: PathBuf,
    nodes: HashMap<u64, Node>,
}

impl Durable {
    /// An empty store at `store`, created or, if it holds our marker, cleared.
    ///
    /// # Errors
    /// `Ok(None)` when `store` holds files without our marker (someone else's directory).
    pub fn create(store: &Path) -> io::Result<Option<Durable>> {
        if store.exists() {
            let foreign = !store.join(MARKER).exists() && fs::read_dir(store)?.next().is_some();
            if foreign {
                return Ok(None);
            }
            fs::remove_dir_all(store)?;
        }
        fs::create_dir_all(store)?;
        File::create(store.join(MARKER))?;
        Ok(Some(Durable { store: store.to_path_buf(), nodes: HashMap::new() }))
    }

    /// Removes the store directory (at a clean unmount: the backing directory then holds the
    /// volatile state, as a disk does after a clean shutdown).
    pub fn remove(&self) -> io::Result<()> {
        fs::remove_dir_all(&self.store)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.nodes.contains_key(&id)
    }

    /// Records a node that is durable already: what the backing directory held at mount.
    pub fn adopt(&mut self, id: u64, node: Node, bytes_from: Option<&Path>) -> io::Result<()> {
        if let Some(src) = bytes_from {
            fs::copy(src, self.path(id))?;
        }
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Makes file `id` durable from `src`: ranges `dirty` copied, the size set to `size`.
    /// `min_size` is the smallest size the file had since its last sync: bytes past it may have
    /// been cut and re-extended with zeros, so the durable copy is cut there first.
    #[allow(clippy::too_many_arguments)]
    pub fn sync_file(
        &mut self,
        id: u64,
        src: &File,
        dirty: &Ranges,
        min_size: u64,
        size: u64,
        mode: u32,
        metadata: bool,
    ) -> io::Result<()> {
        let dst = OpenOptions::new().write(true).create(true).truncate(false).open(self.path(id))?;
        dst.set_len(min_size.min(size))?;
        dst.set_len(size)?;
        let mut buf = Vec::new();
        for (start, end) in dirty.clipped(size) {
            let mut at = start;
            while at < end {
                let want = usize::try_from(end - at).unwrap_or(COPY_CHUNK).min(COPY_CHUNK);
                buf.resize(want, 0);
                let n = src.read_at(&mut buf, at)?;
                if n == 0 {
                    break; // the file shrank under us: the rest is past its end
                }
                dst.write_all_at(&buf[..n], at)?;
                at += n as u64;
            }
        }
        match self.nodes.get_mut(&id) {
            Some(Node::File { mode: durable_mode }) if metadata => *durable_mode = mode,
            Some(_) => {}
            // Its mode at creation is part of the inode the data was written to.
            None => {
                self.nodes.insert(id, Node::File { mode });
            }
        }
        Ok(())
    }

    /// Makes directory `id`'s entries exactly `entries`. Each comes with the node to record for
    /// a child that is not durable yet (an empty file, an empty directory, a symlink).
    pub fn sync_dir(&mut self, id: u64, mode: u32, entries: Vec<(OsString, u64, Node)>) -> io::Result<()> {
        let mut names = BTreeMap::new();
        for (name, child, fresh) in entries {
            if !self.nodes.contains_key(&child) {
                if matches!(fresh, Node::File { .. }) {
                    File::create(self.path(child))?;
                }
                self.nodes.insert(child, fresh);
            }
            names.insert(name, child);
        }
        self.nodes.insert(id, Node::Dir { mode, entries: names });
        Ok(())
    }

    /// The power cut: empties `backing`, writes the durable tree into it, renumbers every node
    /// from `next_id` on, and drops the nodes no durable directory reaches. Returns the tree.
    pub fn materialize(&mut self, backing: &Path, next_id: &mut u64) -> io::Result<Vec<Survivor>> {
        for entry in fs::read_dir(backing)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
        let old = std::mem::take(&mut self.nodes);
        let mut renamed: HashMap<u64, u64> = HashMap::new();
        let mut first_path: HashMap<u64, PathBuf> = HashMap::new();
        let mut survivors = Vec::new();
        let mut pending = vec![(ROOT, ROOT, backing.to_path_buf())];
        renamed.insert(ROOT, ROOT);
        while let Some((old_dir, new_dir, dir_path)) = pending.pop() {
            let Some(Node::Dir { mode, entries }) = old.get(&old_dir) else { continue };
            let mut kept = BTreeMap::new();
            for (name, &old_child) in entries {
                let Some(node) = old.get(&old_child) else { continue };
                let path = dir_path.join(name);
                let kind = match node {
                    Node::File { .. } => Kind::File,
                    Node::Dir { .. } => Kind::Dir,
                    Node::Symlink { .. } => Kind::Symlink,
                };
                if let Some(&new) = renamed.get(&old_child) {
                    // Reached twice. A file is then hard-linked; a directory can appear in two
                    // places only when a cross-directory rename was made durable on one side
                    // only, and a tree cannot hold that: the first place wins.
                    if kind == Kind::Dir {
                        continue;
                    }
                    fs::hard_link(&first_path[&new], &path)?;
                    let size = fs::symlink_metadata(&path)?.len();
                    survivors.push(Survivor { id: new, parent: new_dir, name: name.clone(), kind, size });
                    kept.insert(name.clone(), new);
                    continue;
                }
                let new = *next_id;
                *next_id += 1;
                renamed.insert(old_child, new);
                match node {
                    Node::File { mode } => {
                        fs::copy(self.path(old_child), &path)?;
                        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
                        fs::rename(self.path(old_child), self.path(new))?;
                    }
                    Node::Dir { .. } => {
                        fs::create_dir(&path)?;
                        pending.push((old_child, new, path.clone()));
                    }
                    Node::Symlink { target } => symlink(target, &path)?,
                }
                let size = fs::symlink_metadata(&path)?.len();
                first_path.insert(new, path);
                survivors.push(Survivor { id: new, parent: new_dir, name: name.clone(), kind, size });
                kept.insert(name.clone(), new);
                let renumbered = match node {
                    Node::Dir { mode, .. } => Node::Dir { mode: *mode, entries: BTreeMap::new() },
                    other => other.clone(),
                };
                self.nodes.insert(new, renumbered);
            }
            fs::set_permissions(&dir_path, fs::Permissions::from_mode(*mode))?;
            self.nodes.insert(new_dir, Node::Dir { mode: *mode, entries: kept });
        }
        for (id, node) in &old {
            if matches!(node, Node::File { .. }) && !renamed.contains_key(id) {
                fs::remove_file(self.path(*id))?;
            }
        }
        Ok(survivors)
    }

    fn path(&self, id: u64) -> PathBuf {
        self.store.join(id.to_string())
    }
}
