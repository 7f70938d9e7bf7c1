//! The durability model, proven on real mounts: each test makes some changes, syncs some of
//! them, cuts the power, and checks exactly what survived.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::Fixture;

/// fsync of a directory: open it read-only, fsync the descriptor (FUSE_FSYNCDIR).
fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn unsynced_writes_are_lost_synced_ones_kept_byte_for_byte() {
    let Some(fx) = Fixture::mount("unsynced_writes_are_lost_synced_ones_kept_byte_for_byte") else { return };
    let synced = bytes(300_000, 7);
    let mut f = File::create(fx.path("synced")).unwrap();
    f.write_all(&synced).unwrap();
    f.sync_all().unwrap();
    File::create(fx.path("unsynced")).unwrap().write_all(b"never synced").unwrap();
    sync_dir(&fx.mnt);
    // The unsynced file's name is durable (the directory was synced), its bytes are not.
    assert_eq!(read(&fx.path("unsynced")), b"never synced");
    fx.cut();
    assert_eq!(read(&fx.path("synced")), synced);
    assert_eq!(read(&fx.path("unsynced")), b"");
    // The backing directory itself holds the durable state.
    assert_eq!(read(&fx.backing.join("synced")), synced);
}

#[test]
fn a_write_after_the_last_fdatasync_is_lost_the_earlier_bytes_stay() {
    let Some(fx) = Fixture::mount("a_write_after_the_last_fdatasync_is_lost_the_earlier_bytes_stay") else { return };
    let f = File::create(fx.path("log")).unwrap();
    sync_dir(&fx.mnt);
    f.write_all_at(&[b'a'; 1000], 0).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(&[b'b'; 100], 200).unwrap(); // overwrite inside the synced part
    f.write_all_at(&[b'c'; 500], 1000).unwrap(); // append
    assert_eq!(fs::metadata(fx.path("log")).unwrap().len(), 1500);
    fx.cut();
    assert_eq!(read(&fx.path("log")), vec![b'a'; 1000]);
}

#[test]
fn an_appended_size_extension_needs_fdatasync() {
    let Some(fx) = Fixture::mount("an_appended_size_extension_needs_fdatasync") else { return };
    for name in ["kept", "lost"] {
        let mut f = File::create(fx.path(name)).unwrap();
        f.write_all(b"0123456789").unwrap();
        f.sync_data().unwrap();
        f.write_all(b"tail").unwrap();
        if name == "kept" {
            f.sync_data().unwrap();
        }
    }
    sync_dir(&fx.mnt);
    fx.cut();
    assert_eq!(read(&fx.path("kept")), b"0123456789tail");
    assert_eq!(fs::metadata(fx.path("lost")).unwrap().len(), 10);
    assert_eq!(read(&fx.path("lost")), b"0123456789");
}

#[test]
fn truncation_follows_the_same_rule() {
    let Some(fx) = Fixture::mount("truncation_follows_the_same_rule") else { return };
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(fx.path("f")).unwrap();
    sync_dir(&fx.mnt);
    f.write_all_at(&[b'x'; 100], 0).unwrap();
    f.sync_data().unwrap();
    // Shrink, then grow back: the bytes in between are zeros now, and must be after a sync too.
    f.set_len(10).unwrap();
    f.set_len(50).unwrap();
    f.sync_data().unwrap();
    f.set_len(5).unwrap(); // not synced
    fx.cut();
    let mut expected = vec![b'x'; 10];
    expected.resize(50, 0);
    assert_eq!(read(&fx.path("f")), expected);
}

#[test]
fn a_new_file_without_a_directory_fsync_disappears_even_if_fsynced() {
    let Some(fx) = Fixture::mount("a_new_file_without_a_directory_fsync_disappears_even_if_fsynced") else { return };
    fs::create_dir(fx.path("dir")).unwrap();
    sync_dir(&fx.mnt);
    let mut f = File::create(fx.path("dir/orphan")).unwrap();
    f.write_all(b"synced data").unwrap();
    f.sync_all().unwrap();
    File::create(fx.path("top")).unwrap().sync_all().unwrap();
    fx.cut();
    assert!(fx.path("dir").is_dir(), "the directory's own entry was synced");
    assert!(!fx.path("dir/orphan").exists());
    assert!(!fx.path("top").exists());
    assert_eq!(fs::read_dir(&fx.backing).unwrap().count(), 1, "only dir is left");
}

#[test]
fn a_rename_without_a_directory_fsync_is_undone() {
    let Some(fx) = Fixture::mount("a_rename_without_a_directory_fsync_is_undone") else { return };
    fs::write(fx.path("a"), b"A").unwrap();
    File::open(fx.path("a")).unwrap().sync_all().unwrap();
    sync_dir(&fx.mnt);
    fs::rename(fx.path("a"), fx.path("b")).unwrap();
    fx.cut();
    assert_eq!(read(&fx.path("a")), b"A");
    assert!(!fx.path("b").exists());
}

#[test]
fn a_rename_over_a_file_without_a_directory_fsync_is_undone() {
    let Some(fx) = Fixture::mount("a_rename_over_a_file_without_a_directory_fsync_is_undone") else { return };
    for (name, data) in [("old", b"old".as_slice()), ("new.tmp", b"new".as_slice())] {
        let mut f = File::create(fx.path(name)).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    }
    sync_dir(&fx.mnt);
    fs::rename(fx.path("new.tmp"), fx.path("old")).unwrap();
    assert_eq!(read(&fx.path("old")), b"new");
    fx.cut();
    assert_eq!(read(&fx.path("old")), b"old");
    assert_eq!(read(&fx.path("new.tmp")), b"new");
}

#[test]
fn an_unlink_without_a_directory_fsync_is_undone() {
    let Some(fx) = Fixture::mount("an_unlink_without_a_directory_fsync_is_undone") else { return };
    let mut f = File::create(fx.path("victim")).unwrap();
    f.write_all(b"still here").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::create_dir(fx.path("sub")).unwrap();
    sync_dir(&fx.mnt);
    fs::remove_file(fx.path("victim")).unwrap();
    fs::remove_dir(fx.path("sub")).unwrap();
    assert!(!fx.path("victim").exists());
    fx.cut();
    assert_eq!(read(&fx.path("victim")), b"still here");
    assert!(fx.path("sub").is_dir());
}

#[test]
fn with_the_directory_fsync_every_change_survives() {
    let Some(fx) = Fixture::mount("with_the_directory_fsync_every_change_survives") else { return };
    fs::create_dir(fx.path("d")).unwrap();
    for name in ["gone", "moved", "replaced"] {
        let mut f = File::create(fx.path(&format!("d/{name}"))).unwrap();
        f.write_all(name.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    sync_dir(&fx.path("d"));
    sync_dir(&fx.mnt);
    let mut f = File::create(fx.path("d/new")).unwrap();
    f.write_all(b"new").unwrap();
    f.sync_all().unwrap();
    fs::remove_file(fx.path("d/gone")).unwrap();
    fs::rename(fx.path("d/moved"), fx.path("d/renamed")).unwrap();
    fs::rename(fx.path("d/new"), fx.path("d/replaced")).unwrap();
    fs::hard_link(fx.path("d/renamed"), fx.path("d/link")).unwrap();
    std::os::unix::fs::symlink("renamed", fx.path("d/sym")).unwrap();
    fs::create_dir(fx.path("d/sub")).unwrap();
    sync_dir(&fx.path("d"));
    fx.cut();
    let mut names: Vec<String> =
        fs::read_dir(fx.path("d")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["link", "renamed", "replaced", "sub", "sym"]);
    assert_eq!(read(&fx.path("d/renamed")), b"moved");
    assert_eq!(read(&fx.path("d/link")), b"moved");
    assert_eq!(read(&fx.path("d/replaced")), b"new");
    assert_eq!(fs::read_link(fx.path("d/sym")).unwrap(), Path::new("renamed"));
    // The hard link is one inode after the cut too.
    fs::write(fx.path("d/link"), b"through the link").unwrap();
    assert_eq!(read(&fx.path("d/renamed")), b"through the link");
}

#[test]
fn sync_file_range_alone_does_not_count_as_durable() {
    let Some(fx) = Fixture::mount("sync_file_range_alone_does_not_count_as_durable") else { return };
    let mut f = File::create(fx.path("wal")).unwrap();
    f.write_all(b"head").unwrap();
    f.sync_all().unwrap();
    sync_dir(&fx.mnt);
    f.write_all(b" and the tail sled writes").unwrap();
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // What sled 0.34 calls instead of fsync (src/pagecache/iobuf.rs).
    #[allow(unsafe_code)]
    // SAFETY: a plain syscall on a descriptor this test owns; no memory is passed.
    let rc = unsafe { libc::sync_file_range(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, flags) };
    assert_eq!(rc, 0, "sync_file_range failed: {}", std::io::Error::last_os_error());
    fx.cut();
    assert_eq!(read(&fx.path("wal")), b"head");
}

#[test]
fn handles_opened_before_a_cut_get_eio() {
    let Some(fx) = Fixture::mount("handles_opened_before_a_cut_get_eio") else { return };
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(fx.path("f")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    sync_dir(&fx.mnt);
    let dir = File::open(&fx.mnt).unwrap();
    fx.cut();
    let eio = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}");
    };
    eio(f.write_all(b"x"), "write");
    eio(f.read(&mut [0; 4]).map(|_| ()), "read");
    eio(f.sync_all(), "fsync");
    eio(f.metadata().map(|_| ()), "fstat");
    eio(dir.sync_all(), "fsync of a directory handle");
    // A fresh open sees the survived state and works.
    assert_eq!(read(&fx.path("f")), b"durable");
    fs::write(fx.path("f"), b"after").unwrap();
    assert_eq!(read(&fx.path("f")), b"after");
}

#[test]
fn several_cuts_in_a_row_each_keep_only_what_was_durable() {
    let Some(fx) = Fixture::mount("several_cuts_in_a_row_each_keep_only_what_was_durable") else { return };
    let mut expected = Vec::new();
    for round in 0..5u8 {
        let mut f = OpenOptions::new().append(true).create(true).open(fx.path("log")).unwrap();
        f.write_all(&[round; 10]).unwrap();
        f.sync_data().unwrap();
        expected.extend_from_slice(&[round; 10]);
        f.write_all(b"lost").unwrap();
        if round == 0 {
            sync_dir(&fx.mnt);
        }
        File::create(fx.path(&format!("tmp{round}"))).unwrap();
        fx.cut();
        assert_eq!(read(&fx.path("log")), expected, "after cut {}", round + 1);
        assert_eq!(fs::read_dir(&fx.mnt).unwrap().count(), 1, "after cut {}", round + 1);
    }
}

#[test]
fn shared_writable_mmap_is_refused() {
    let Some(fx) = Fixture::mount("shared_writable_mmap_is_refused") else { return };
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(fx.path("m")).unwrap();
    f.set_len(4096).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: the mapping is never dereferenced; it is unmapped at once if the kernel allowed it.
    let addr = unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        );
        if addr != libc::MAP_FAILED {
            libc::munmap(addr, 4096);
        }
        addr
    };
    let err = std::io::Error::last_os_error();
    assert_eq!(addr, libc::MAP_FAILED, "a shared writable mapping must be refused: its writes would bypass the model");
    assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
}

#[test]
fn many_small_writes_and_syncs_are_fast_enough() {
    let Some(fx) = Fixture::mount("many_small_writes_and_syncs_are_fast_enough") else { return };
    let mut f = File::create(fx.path("wal")).unwrap();
    sync_dir(&fx.mnt);
    let start = std::time::Instant::now();
    for i in 0..5000u32 {
        f.write_all(&i.to_le_bytes().repeat(32)).unwrap();
        if i % 10 == 9 {
            f.sync_data().unwrap();
        }
    }
    let elapsed = start.elapsed();
    assert!(elapsed.as_secs() < 10, "5000 writes and 500 fdatasyncs took {elapsed:?}");
    fx.cut();
    assert_eq!(fs::metadata(fx.path("wal")).unwrap().len(), 5000 * 128);
    let mut data = Vec::new();
    File::open(fx.path("wal")).unwrap().read_to_end(&mut data).unwrap();
    assert_eq!(&data[128 * 4999..128 * 4999 + 4], 4999u32.to_le_bytes());
    if let Err(e) = fs::remove_file(fx.path("missing")) {
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
