//! Long-lived responses that end cleanly when the process drains: a WebSocket echo (`/ws`)
//! and server-sent events (`/events`). Both await [`actix_endless::Draining`], so an upgrade
//! or a stop says goodbye to their clients (close code 1001, a final `shutdown` event) instead
//! of leaving them to be cut at hammer time.

use std::convert::Infallible;
use std::time::Duration;

use actix_endless::Draining;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::future::{select, Either};

/// How often `/events` sends an event.
const EVENT_EVERY: Duration = Duration::from_millis(100);

/// Who answers: `pid 123 generation 2`.
fn who() -> String {
    format!(
        "pid {} generation {}",
        std::process::id(),
        actix_endless::generation()
    )
}

/// `GET /ws`: greets with this process's pid and generation, then echoes text and binary
/// messages; on drain it closes with 1001 ("going away").
pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    mut draining: Draining,
) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut messages) = actix_ws::handle(&req, body)?;
    actix_rt::spawn(async move {
        if session.text(format!("hello from {}", who())).await.is_err() {
            return;
        }
        loop {
            match select(Box::pin(messages.recv()), &mut draining).await {
                Either::Left((Some(Ok(message)), _)) => {
                    let sent = match message {
                        Message::Text(text) => session.text(text).await,
                        Message::Binary(bytes) => session.binary(bytes).await,
                        Message::Ping(bytes) => session.pong(&bytes).await,
                        Message::Close(reason) => {
                            let _ = session.close(reason).await;
                            return;
                        }
                        _ => Ok(()),
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                // The client went away or broke the protocol.
                Either::Left(_) => {
                    let _ = session.close(None).await;
                    return;
                }
                Either::Right(_) => {
                    let reason = CloseReason {
                        code: CloseCode::Away,
                        description: Some(format!("{} is draining", who())),
                    };
                    let _ = session.close(Some(reason)).await;
                    return;
                }
            }
        }
    });
    Ok(response)
}

/// `GET /events`: server-sent events, one `tick` every 100 ms; on drain a final `shutdown`
/// event, then the stream ends (the chunked terminator), so the client reconnects (to the new
/// generation after an upgrade).
pub async fn events(draining: Draining) -> HttpResponse {
    let opening = Bytes::from(format!("retry: 100\nevent: open\ndata: {}\n\n", who()));
    let ticks = futures_util::stream::unfold((1u64, Some(draining)), |(n, draining)| async move {
        let mut draining = draining?;
        let tick = Box::pin(actix_rt::time::sleep(EVENT_EVERY));
        let event = match select(tick, &mut draining).await {
            Either::Left(_) => format!("event: tick\ndata: {n} {}\n\n", who()),
            Either::Right(_) => {
                return Some((
                    Ok::<_, Infallible>(Bytes::from(format!(
                        "event: shutdown\ndata: {}\n\n",
                        who()
                    ))),
                    (n, None),
                ))
            }
        };
        Some((Ok(Bytes::from(event)), (n + 1, Some(draining))))
    });
    let stream = futures_util::stream::StreamExt::chain(
        futures_util::stream::once(async move { Ok::<_, Infallible>(opening) }),
        ticks,
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream)
}
