//! The browser the web-page tests drive: headless chromium (through chromedriver) loads a
//! page served from 127.0.0.1, runs its script, and posts its form, so a failure in a page
//! test is the page's and not the harness's.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::browser::{Browser, PAGE_WAIT};
use fantoccini::Locator;

/// Serves `pages` (one per accepted connection, in order) on a 127.0.0.1 port; returns the
/// port and, when joined, the requests it received.
fn serve(pages: Vec<String>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(false).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for page in pages {
            let Ok((mut stream, _)) = listener.accept() else {
                break;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0usize;
            for _ in 0..100 {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0u8; length.min(10_000)];
            let _ = reader.read_exact(&mut body);
            let request = format!("{head}\n{}", String::from_utf8_lossy(&body));
            let is_page = !request.starts_with("GET /favicon");
            requests.push(request);
            let page = if is_page { page } else { String::new() };
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(response.as_bytes());
            if requests.iter().any(|r| r.starts_with("POST /done")) {
                break;
            }
        }
        requests
    });
    (port, handle)
}

#[tokio::test]
async fn headless_chromium_renders_runs_script_and_posts_a_form() {
    let form = r#"<!doctype html><title>one</title>
        <p id="js">no script</p>
        <script>document.getElementById('js').textContent = 'script ran';</script>
        <form method="post" action="/done"><input name="answer" value="42">
        <button id="go" type="submit">Go</button></form>"#;
    let done = "<!doctype html><title>two</title><p id=\"result\">posted</p>";
    let pages = vec![
        form.to_string(),
        done.to_string(),
        done.to_string(),
        done.to_string(),
    ];
    let (port, server) = serve(pages);

    let browser = Browser::launch().await;
    let c = &browser.client;
    c.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
    let js = c
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Id("js"))
        .await
        .unwrap();
    assert_eq!(js.text().await.unwrap(), "script ran");
    c.find(Locator::Id("go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let result = c
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Id("result"))
        .await
        .unwrap();
    assert_eq!(result.text().await.unwrap(), "posted");
    browser.close().await;

    let requests = server.join().unwrap();
    assert!(requests[0].starts_with("GET / "), "{requests:?}");
    let post = requests
        .iter()
        .find(|r| r.starts_with("POST /done"))
        .unwrap_or_else(|| panic!("no POST: {requests:?}"));
    assert!(post.ends_with("answer=42"), "{post}");
}
