//! The `faultfs mount` binary as a harness runs it: a cut over the control socket, then a clean
//! unmount on SIGTERM.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

fn mounted(mnt: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let mnt = mnt.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(mnt))
}

#[test]
fn the_binary_cuts_on_the_control_socket_and_unmounts_on_sigterm() {
    if !Path::new("/dev/fuse").exists() && std::env::var_os("FAULTFS_REQUIRE_FUSE").is_none_or(|v| v != "1") {
        eprintln!("SKIPPED the_binary_cuts_on_the_control_socket_and_unmounts_on_sigterm: /dev/fuse does not exist");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt, socket) = (dir.path().join("backing"), dir.path().join("mnt"), dir.path().join("control"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(backing.join("existing"), b"on disk before the mount").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_faultfs"))
        .arg("mount")
        .args([&backing, &mnt])
        .arg("--control")
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    if !ready.starts_with("faultfs: mounted") {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        let status = child.wait().unwrap();
        if err.contains("mounting") && std::env::var_os("FAULTFS_REQUIRE_FUSE").is_none_or(|v| v != "1") {
            eprintln!("SKIPPED the_binary_cuts_on_the_control_socket_and_unmounts_on_sigterm: {err}");
            return;
        }
        panic!("faultfs did not mount ({status}): {err}");
    }
    assert!(mounted(&mnt));
    assert_eq!(faultfs::control::request(&socket, "ping").unwrap(), "ok");

    let mut f = File::create(mnt.join("new")).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    File::open(&mnt).unwrap().sync_all().unwrap();
    f.write_all(b", then lost").unwrap();
    drop(f);
    fs::remove_file(mnt.join("existing")).unwrap();
    let answer = faultfs::control::request(&socket, "cut").unwrap();
    assert_eq!(answer, "ok cut 1 names 2");
    assert_eq!(fs::read(mnt.join("new")).unwrap(), b"synced");
    assert_eq!(fs::read(mnt.join("existing")).unwrap(), b"on disk before the mount");
    let refused = faultfs::control::request(&socket, "explode").unwrap_err();
    assert!(refused.to_string().contains("unknown command"), "{refused}");

    // SAFETY: a signal to the child this test started and has not reaped.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "faultfs exited with {status}");
    assert!(!mounted(&mnt), "still mounted after SIGTERM");
    assert!(!socket.exists(), "the control socket is removed at exit");
    // A clean unmount leaves the volatile state (which equals the durable one here) on disk.
    assert_eq!(fs::read(backing.join("new")).unwrap(), b"synced");
    assert!(!dir.path().join("backing.faultfs-store").exists(), "the store is removed at a clean unmount");
}
