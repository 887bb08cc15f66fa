//! The emulator behind an HTTP listener: one thread per request, until the
//! process ends. Used by `vpc-sim serve` and by in-process simulations of
//! many nodes (`bench/scale`).

use std::sync::Arc;

use super::{Emulator, HttpRequest, HttpResponse};

/// Binds `listen` (such as `127.0.0.1:0`); returns the bound address.
pub fn listen(listen: &str) -> Result<(String, tiny_http::Server), String> {
    let server = tiny_http::Server::http(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_default();
    Ok((bound, server))
}

/// Answers every request of `server` with `emulator`; with `log`, one line
/// on stderr for every failed call and every dropped answer.
pub fn serve(server: tiny_http::Server, emulator: Arc<Emulator>, log: bool) {
    for mut request in server.incoming_requests() {
        let emulator = Arc::clone(&emulator);
        std::thread::spawn(move || {
            let mut body = Vec::new();
            let _ = request.as_reader().read_to_end(&mut body);
            let req = HttpRequest {
                method: request.method().as_str().to_string(),
                path: request.url().split('?').next().unwrap_or("/").to_string(),
                headers: request
                    .headers()
                    .iter()
                    .map(|h| {
                        (
                            h.field.as_str().as_str().to_ascii_lowercase(),
                            h.value.as_str().to_string(),
                        )
                    })
                    .collect(),
                body,
                peer: request.remote_addr().map(|a| a.ip()),
            };
            let resp = emulator.handle(&req);
            if log {
                log_failure(&req, &resp);
            }
            if resp.dropped {
                if log {
                    eprintln!(
                        "{}: applied; answer dropped (--drop-responses)",
                        req.headers
                            .get("x-tc-action")
                            .map(String::as_str)
                            .unwrap_or("?")
                    );
                }
                // The raw writer, dropped unwritten: no answer at all (a
                // dropped `Request` would send a 500).
                drop(request.into_writer());
                return;
            }
            let header = tiny_http::Header::from_bytes("Content-Type", resp.content_type)
                .expect("static header");
            let _ = request.respond(
                tiny_http::Response::from_data(resp.body)
                    .with_status_code(resp.status)
                    .with_header(header),
            );
        });
    }
}

/// One line on stderr for every API call that failed, for whoever reads
/// the emulator's log.
fn log_failure(req: &HttpRequest, resp: &HttpResponse) {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&resp.body) else {
        return;
    };
    if let Some(error) = body.get("Response").and_then(|r| r.get("Error")) {
        let action = req
            .headers
            .get("x-tc-action")
            .map(String::as_str)
            .unwrap_or("?");
        eprintln!(
            "{action}: {} {}",
            error["Code"].as_str().unwrap_or("?"),
            error["Message"].as_str().unwrap_or("")
        );
    }
}
