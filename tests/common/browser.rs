//! A real browser for the web pages: Debian's `chromium`, headless, driven over WebDriver
//! (Debian's `chromium-driver`, i.e. `chromedriver`) with the `fantoccini` client. A missing
//! browser or driver fails the test loudly.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};

use super::process::{BoundedChild, which};
use super::wait_until;

/// How long a page may take to load or an element to appear.
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

fn tool(env: &str, name: &str, package: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    which(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: the web page tests need Debian's `{package}` \
             (apt-get install -y chromium chromium-driver; .ci/run installs them)"
        )
    })
}

/// A chromedriver process on a free 127.0.0.1 port, and a headless chromium session on it.
/// Dropping it ends the session's process tree (chromedriver kills its chromium).
pub struct Browser {
    pub client: Client,
    _driver: BoundedChild,
}

impl Browser {
    /// Starts chromedriver and a headless chromium with a fresh profile. The sandbox is off
    /// because tests run as root in CI, where chromium refuses to start with it.
    pub async fn launch() -> Browser {
        let chromium = tool("PINBRIDGE_TEST_CHROMIUM", "chromium", "chromium");
        let chromedriver = tool(
            "PINBRIDGE_TEST_CHROMEDRIVER",
            "chromedriver",
            "chromium-driver",
        );
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("a free port for chromedriver");
            l.local_addr().unwrap().port()
        };
        let mut cmd = Command::new(chromedriver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null());
        let driver = BoundedChild::spawn("chromedriver", cmd);
        let up = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up,
            "chromedriver did not listen on 127.0.0.1:{port} within 20 s"
        );
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run"],
            }),
        );
        // chromedriver is plain HTTP on loopback: no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("starting headless chromium through chromedriver: {e}"));
        Browser {
            client,
            _driver: driver,
        }
    }

    /// Ends the browser session (chromium exits); the driver stops on drop.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
