//! The servers QEMU tests use beyond a plain `imprint serve` ([`super::Served`]):
//! Debian's nginx publishing a repository as plain files, `imprint serve
//! --hosts` as a provisioning server for network boots (and what it says of a
//! machine), a static boot script, and a test certificate authority for HTTPS.

use super::vm::{NGINX, artifacts};
use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's nginx serving a directory as plain static files on a loopback
/// port, with its own configuration and logs: a repository published as most
/// are, on a web server (or a CDN) that knows nothing of imprint.
pub struct Nginx {
    child: std::process::Child,
    dir: tempfile::TempDir,
    pub url: String,
}

impl Nginx {
    pub fn start(root: &Path) -> Nginx {
        Nginx::start_with(root, None)
    }

    /// Over HTTPS with `tls` (certificate chain, key).
    pub fn start_tls(root: &Path, tls: (&Path, &Path)) -> Nginx {
        Nginx::start_with(root, Some(tls))
    }

    fn start_with(root: &Path, tls: Option<(&Path, &Path)>) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             user root root;\nevents {{ worker_connections 256; }}\n\
             http {{\n  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n\
               sendfile on;\n\
               log_format requests '$remote_addr \"$request\" $status $pipe $connection';\n\
               access_log {d}/access.log requests;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port}{}; root {}; {} }}\n}}\n",
            if tls.is_some() { " ssl" } else { "" },
            root.display(),
            tls.map(|(cert, key)| format!(
                "ssl_certificate {}; ssl_certificate_key {};",
                cert.display(),
                key.display()
            ))
            .unwrap_or_default()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(NGINX)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let addr = format!("127.0.0.1:{port}");
        wait_listening(&addr, "nginx", &dir.path().join("error.log"));
        let scheme = if tls.is_some() { "https" } else { "http" };
        Nginx {
            child,
            dir,
            url: format!("{scheme}://{addr}"),
        }
    }

    /// The request lines ("GET /path HTTP/1.1") it has logged so far.
    pub fn requests(&self) -> Vec<String> {
        self.log()
            .iter()
            .filter_map(|l| Some(l.split('"').nth(1)?.to_string()))
            .collect()
    }

    /// How many requests it has logged for paths containing `path_part`.
    pub fn requested(&self, path_part: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.contains(path_part))
            .count()
    }

    /// Requests for `path_part` that nginx found already waiting on their
    /// connection when it finished the one before (HTTP/1.1 pipelining).
    pub fn pipelined(&self, path_part: &str) -> usize {
        self.log()
            .iter()
            .filter(|l| l.contains(path_part))
            .filter(|l| {
                l.rsplit('"')
                    .next()
                    .and_then(|t| t.split_whitespace().nth(1))
                    == Some("p")
            })
            .count()
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; a server started at once
/// gets it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (30 s at most) for a server just started to accept on `addr`; on a
/// timeout fails with its log.
pub fn wait_listening(addr: &str, server: &str, log: &Path) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{server} did not listen on {addr}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ends a server: terminated, not killed, so a master process takes its
/// workers with it.
pub fn terminate(child: &mut std::process::Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = child.wait();
}

/// `imprint serve --hosts` for network boots, on `listen` (a free port when
/// `None`): the inventory `inventory` (TOML, written next to the repository),
/// the deploy environment's kernel and initramfs, the machines kept under
/// the repository's directory. Returns the server and the `qemu/run --net`
/// that network-boots from it.
pub fn provisioning_server(repo: &Repo, inventory: &str, listen: Option<&str>) -> (Served, String) {
    provisioning_server_with(repo, inventory, listen, &[])
}

/// [`provisioning_server`] with more `serve` options.
pub fn provisioning_server_with(
    repo: &Repo,
    inventory: &str,
    listen: Option<&str>,
    extra: &[&str],
) -> (Served, String) {
    let a = artifacts();
    let dir = repo.dir.path();
    let hosts = dir.join("hosts.toml");
    std::fs::write(&hosts, inventory).unwrap();
    let data = dir.join("data");
    let (kernel, initrd) = (a.path("vmlinuz"), a.path("initramfs.img"));
    let mut options = vec![
        "--hosts",
        hosts.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
    ];
    options.extend_from_slice(extra);
    std::fs::create_dir_all(repo.path()).unwrap();
    let served = match listen {
        Some(addr) => Served::start_at(&repo.path(), addr, &options),
        None => Served::start_with(&repo.path(), &options, None, Stdio::null()),
    };
    let net = format!(
        "user-boot:{}/boot.ipxe",
        served.url.replace("127.0.0.1", "10.0.2.2")
    );
    (served, net)
}

/// What the provisioning server says of machine `mac` (`GET /machines`).
pub fn machine_entry(served: &Served, mac: &str) -> serde_json::Value {
    let (status, _, body) = operator_get(&served.addr(), "/machines");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    doc["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == mac)
        .cloned()
        .unwrap_or_else(|| panic!("{mac} not in {doc}"))
}

pub fn status_of(url: &str) -> serde_json::Value {
    let addr = url.trim_start_matches("http://");
    let (status, _, body) = operator_get(addr, "/status");
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// A static network boot for every machine: the deploy environment's kernel
/// and initramfs copied into the repository's `boot/`, and `boot.ipxe` booting
/// them with `imprint.repo=` the server at `url` (as the guest reaches it) and
/// `args`. Returns the `qemu/run --net` that network-boots from it.
pub fn static_boot_script(repo: &Repo, url: &str, args: &str) -> String {
    let a = artifacts();
    let boot_dir = repo.path().join("boot");
    std::fs::create_dir_all(&boot_dir).unwrap();
    std::fs::copy(a.path("vmlinuz"), boot_dir.join("vmlinuz")).unwrap();
    std::fs::copy(a.path("initramfs.img"), boot_dir.join("initramfs.img")).unwrap();
    let url = url.replace("127.0.0.1", "10.0.2.2");
    std::fs::write(
        repo.path().join("boot.ipxe"),
        format!(
            "#!ipxe\nkernel {url}/boot/vmlinuz initrd=initramfs.img console=ttyS0 quiet panic=-1 \
             imprint.repo={url} {args}\ninitrd {url}/boot/initramfs.img\nboot\n"
        ),
    )
    .unwrap();
    format!("user-boot:{url}/boot.ipxe")
}

/// A certificate authority made for a test with openssl, and a server
/// certificate it signed for 127.0.0.1 and 10.0.2.2 (the host, as QEMU's
/// guests reach it).
pub struct TestCa {
    _dir: tempfile::TempDir,
    /// The CA's certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl (Debian's openssl package; scripts/deps test installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let subject = format!("/CN=imprint test CA {name}");
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&args);
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=repository",
        ]);
        openssl(&args);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,IP:10.0.2.2,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "3",
            "-extfile",
            "server.ext",
        ]);
        TestCa {
            ca: d.join("ca.pem"),
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            _dir: dir,
        }
    }
}
