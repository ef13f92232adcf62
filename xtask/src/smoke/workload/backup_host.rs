//! A backup host for the tests: Debian's OpenSSH server, started as a child of this process on
//! an address and port of its own (loopback, or inside a given network namespace), with its own
//! host key and an `authorized_keys` whose every key may run only `rrsync` on the host's
//! storage directory (`restrict,command="/usr/bin/rrsync DIR"`), which is how an operator
//! restricts the key a node ships its snapshots with. In: a directory of the run's own, the
//! listen address, the clients' public keys. Out: a running `sshd` (its known_hosts line, its
//! storage directory), killed and waited for when dropped. Nothing of the host's sshd is used:
//! not port 22, not `/etc/ssh` (only `/run/sshd`, the empty directory sshd's privilege
//! separation requires, is made when it is missing).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::smoke::local::{free_port, KillOnDrop};

/// Where Debian's OpenSSH server and rsync's restricted server are.
const SSHD: &str = "/usr/sbin/sshd";
const RRSYNC: &str = "/usr/bin/rrsync";

/// A running backup host.
pub struct BackupHost {
    child: KillOnDrop,
    addr: IpAddr,
    port: u16,
    host_key_pub: String,
    storage: PathBuf,
    log: PathBuf,
}

impl BackupHost {
    /// Starts `sshd -D -e -f DIR/sshd_config` listening on `addr` (port: a free one below the
    /// ephemeral range when `port` is `None`), inside the network namespace `netns` when given
    /// (`nsenter --net`, which execs sshd: the child is sshd itself). `authorized` are the
    /// clients' public keys (`ssh-ed25519 AAAA... comment`), each allowed `rrsync` on
    /// `DIR/storage` only, as root (`PermitRootLogin forced-commands-only`).
    pub fn start(
        dir: &Path,
        addr: IpAddr,
        port: Option<u16>,
        netns: Option<&Path>,
        authorized: &[String],
    ) -> Result<BackupHost> {
        if authorized.is_empty() {
            bail!("the backup host needs at least one client key to authorize");
        }
        let storage = Self::storage_of(dir);
        let lines: String = authorized
            .iter()
            .map(|k| format!("restrict,command=\"{RRSYNC} {}\" {}\n", storage.display(), k.trim()))
            .collect();
        Self::start_with_keys(dir, addr, port, netns, &lines)
    }

    /// Where a backup host made in `dir` keeps what the clients ship.
    pub fn storage_of(dir: &Path) -> PathBuf {
        dir.join("storage")
    }

    /// The host key a backup host made in `dir` will present: made now if it is not there yet
    /// (so that a cluster file can pin it before the host starts), `TYPE BASE64`.
    pub fn host_key_of(dir: &Path) -> Result<String> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let host_key = dir.join("ssh_host_ed25519_key");
        if !host_key.exists() {
            keygen(&host_key, "backup-host")?;
        }
        let pub_file = host_key.with_extension("pub");
        Ok(fs::read_to_string(&pub_file)
            .with_context(|| format!("cannot read {}", pub_file.display()))?
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// [`BackupHost::start`] with `authorized_keys` as given, whole (e.g. the one `render`
    /// writes for the backup host, each member's key confined to its own directory).
    pub fn start_with_keys(
        dir: &Path,
        addr: IpAddr,
        port: Option<u16>,
        netns: Option<&Path>,
        authorized_keys: &str,
    ) -> Result<BackupHost> {
        for (tool, package) in [(SSHD, "openssh-server"), (RRSYNC, "rsync"), ("/usr/bin/ssh-keygen", "openssh-client")]
        {
            if !Path::new(tool).exists() {
                bail!("the backup host needs {tool}: apt-get install {package}");
            }
        }
        let storage = Self::storage_of(dir);
        fs::create_dir_all(&storage).with_context(|| format!("cannot create {}", storage.display()))?;
        let host_key_pub = Self::host_key_of(dir)?;
        let host_key = dir.join("ssh_host_ed25519_key");
        let keys = dir.join("authorized_keys");
        crate::util::write_atomic(&keys, authorized_keys.as_bytes(), 0o600)?;
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let pid_file = dir.join("sshd.pid");
        let config = dir.join("sshd_config");
        let text = format!(
            "# A backup host of the smoke test's own (xtask/src/smoke/workload/backup_host.rs).\n\
             Port {port}\nListenAddress {addr}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin forced-commands-only\nAllowUsers root\nStrictModes no\nUsePAM no\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             AllowTcpForwarding no\nX11Forwarding no\nPermitTunnel no\nLogLevel VERBOSE\n",
            host_key.display(),
            pid_file.display(),
            keys.display()
        );
        crate::util::write_atomic(&config, text.as_bytes(), 0o600)?;
        // sshd's privilege separation needs this empty directory (its unit makes it on a host
        // where it runs as a service).
        fs::create_dir_all("/run/sshd").context("cannot create /run/sshd, which sshd requires")?;
        let check = Command::new(SSHD).arg("-t").arg("-f").arg(&config).output().context("cannot run sshd -t")?;
        if !check.status.success() {
            bail!("{}: sshd -t refuses it: {}", config.display(), String::from_utf8_lossy(&check.stderr).trim());
        }
        let log = dir.join("sshd.log");
        let out = fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = match netns {
            None => Command::new(SSHD),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("--").arg(SSHD);
                c
            }
        };
        cmd.args(["-D", "-e", "-f"]).arg(&config).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let child = KillOnDrop(cmd.spawn().context("cannot start sshd")?);
        let host = BackupHost { child, addr, port, host_key_pub, storage, log };
        host.wait_listening(Duration::from_secs(10))?;
        Ok(host)
    }

    /// Until sshd says it listens (its log), or it exited.
    fn wait_listening(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("Server listening on") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "sshd did not listen on {}:{} within {} s: {}",
                    self.addr,
                    self.port,
                    timeout.as_secs(),
                    text.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `[addr]:port ssh-ed25519 AAAA...`: the line a client's known_hosts needs.
    pub fn known_hosts_line(&self) -> String {
        format!("[{}]:{} {}", self.addr, self.port, self.host_key_pub)
    }

    /// Where what the clients ship goes.
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of sshd (ours).
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// `ssh-keygen -t ed25519 -N ''` writing `path` and `path.pub`.
pub fn keygen(path: &Path, comment: &str) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ssh-keygen (apt-get install openssh-client)")?;
    if !out.status.success() {
        bail!("ssh-keygen -f {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The key node `node` ships its snapshots with: the one `cargo xtask pki` made for it
/// (`backup/<node>/id_ed25519` of the PKI), as the rendered ship step uses it. Returns the
/// private key's path (the public one beside it, `.pub`).
pub fn backup_client_key(pki: &crate::pki::layout::PkiLayout, node: &str) -> Result<PathBuf> {
    let (key, public) = pki.backup_key(node);
    if !key.is_file() || !public.is_file() {
        bail!(
            "{} has no backup key for {node} ({}): issue the PKI again with `cargo xtask pki --cluster FILE`, which \
             makes it",
            pki.root.display(),
            key.display()
        );
    }
    Ok(key)
}

/// The `ssh` command line (for `rsync -e`) that reaches `host` with `key`, trusting only the
/// host key in `known_hosts`, never asking anything.
pub fn ssh_command(key: &Path, known_hosts: &Path, port: u16) -> String {
    format!(
        "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes -p {port}",
        key.display(),
        known_hosts.display()
    )
}

/// How a client reaches a backup host: its address and port, the key it logs in with, and the
/// known_hosts file that holds the host's key.
#[derive(Debug, Clone)]
pub struct Remote {
    pub addr: IpAddr,
    pub port: u16,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
}

impl Remote {
    /// A client of `host` with `key`, its known_hosts written to `known_hosts`.
    pub fn of(host: &BackupHost, key: &Path, known_hosts: &Path) -> Result<Remote> {
        crate::util::write_atomic(known_hosts, (host.known_hosts_line() + "\n").as_bytes(), 0o644)?;
        Ok(Remote { addr: host.addr, port: host.port, key: key.to_path_buf(), known_hosts: known_hosts.to_path_buf() })
    }

    fn rsync(&self, args: &[String]) -> Result<String> {
        let ssh = ssh_command(&self.key, &self.known_hosts, self.port);
        let out = Command::new("rsync")
            .args(["-e", &ssh])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run rsync (apt-get install rsync openssh-client)")?;
        if !out.status.success() {
            bail!(
                "rsync {} with the backup host {}:{} failed: {}",
                args.join(" "),
                self.addr,
                self.port,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Copies `files` into the host's storage, each under its own name (rsync writes beside
    /// and renames: a half-shipped file never has its name).
    pub fn push(&self, files: &[&Path]) -> Result<()> {
        let mut args: Vec<String> = vec!["--times".into()];
        args.extend(files.iter().map(|f| f.display().to_string()));
        args.push(format!("root@{}:", self.addr));
        self.rsync(&args).map(|_| ())
    }

    /// The names of the files in the host's storage.
    pub fn list(&self) -> Result<Vec<String>> {
        let text = self.rsync(&["--list-only".into(), format!("root@{}:", self.addr)])?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with('-'))
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .collect())
    }

    /// Copies the host's `name` into the directory `dest`.
    pub fn pull(&self, name: &str, dest: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
        self.rsync(&["--times".into(), format!("root@{}:{name}", self.addr), format!("{}/", dest.display())])?;
        Ok(dest.join(name))
    }
}

/// The public half of a key made by [`keygen`].
pub fn public_key(key: &Path) -> Result<String> {
    let file = PathBuf::from(format!("{}.pub", key.display()));
    Ok(fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot-sized file shipped with rsync over ssh lands in the storage directory; a
    /// command other than rsync is refused by the forced rrsync; a client that does not know
    /// the host key refuses it.
    #[test]
    fn rsync_over_ssh_lands_in_storage_and_nothing_else_runs() {
        if !crate::util::is_root() {
            panic!("this test starts sshd and logs in as root: run it as root (cargo xtask ci does)");
        }
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("id_ed25519");
        keygen(&key, "backup@node1").unwrap();
        let host = BackupHost::start(
            &tmp.path().join("host"),
            "127.0.0.1".parse().unwrap(),
            None,
            None,
            &[public_key(&key).unwrap()],
        )
        .unwrap();
        let known = tmp.path().join("known_hosts");
        let remote = Remote::of(&host, &key, &known).unwrap();
        let file = tmp.path().join("snap.db");
        fs::write(&file, vec![7u8; 100_000]).unwrap();
        let ssh = ssh_command(&key, &known, host.port());
        remote.push(&[&file]).unwrap();
        assert_eq!(fs::read(host.storage().join("snap.db")).unwrap().len(), 100_000);
        assert_eq!(remote.list().unwrap(), ["snap.db"]);
        let back = remote.pull("snap.db", &tmp.path().join("back")).unwrap();
        assert_eq!(fs::read(back).unwrap().len(), 100_000);
        let shell = Command::new("sh").args(["-c", &format!("{ssh} root@{} id", host.addr())]).output().unwrap();
        assert!(!shell.status.success() || !String::from_utf8_lossy(&shell.stdout).contains("uid="), "a shell ran");
        let empty = tmp.path().join("empty_known_hosts");
        fs::write(&empty, "").unwrap();
        let out = Command::new("rsync")
            .args(["-e", &ssh_command(&key, &empty, host.port())])
            .arg(&file)
            .arg(format!("root@{}:other.db", host.addr()))
            .output()
            .unwrap();
        assert!(!out.status.success(), "an unknown host key was accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"));
    }
}
