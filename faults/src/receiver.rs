//! A webhook receiver for tests: an HTTP server on 127.0.0.1 that records every request and
//! answers as told — 200, a status, a redirect, an answer far too long, or never (it hangs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use warp::http::{HeaderMap, Response, StatusCode};
use warp::Filter;

/// How the receiver answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// 200, an empty body.
    Ok,
    /// 500 to the first `n` requests, then 200.
    FailFirst(usize),
    /// This status, a short body.
    Status(u16),
    /// 302 to another path of the receiver.
    Redirect,
    /// Headers and then the body never come.
    Hang,
    /// 200 with a body of this many bytes.
    HugeBody(usize),
}

/// One request as it arrived, and the status it got (`None`: it was never answered).
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names lower-cased; the last value of each.
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    pub status: Option<u16>,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    behaviour: Option<Behaviour>,
    received: Vec<Received>,
}

pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    server: JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on a fresh port that answers with `behaviour`.
    pub async fn start(behaviour: Behaviour) -> Receiver {
        let state = Arc::new(Mutex::new(State {
            behaviour: Some(behaviour),
            received: Vec::new(),
        }));
        let arrived = Arc::new(Notify::new());
        let (shared, notify) = (state.clone(), arrived.clone());
        let route = warp::any()
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(move |headers: HeaderMap, body: Bytes| {
                let (state, notify) = (shared.clone(), notify.clone());
                async move { answer(&state, &notify, headers, body).await }
            });
        let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
        Receiver {
            addr,
            state,
            arrived,
            server: tokio::spawn(server),
        }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests with `behaviour`.
    pub fn set(&self, behaviour: Behaviour) {
        self.state.lock().expect("receiver state").behaviour = Some(behaviour);
    }

    /// Every request so far, in the order they arrived.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("receiver state").received.clone()
    }

    /// Waits until `done` holds for the requests received, at most `timeout`; returns them.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            let received = self.received();
            if done(&received) || tokio::time::Instant::now() >= deadline {
                return received;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(
    state: &Mutex<State>,
    arrived: &Notify,
    headers: HeaderMap,
    body: Bytes,
) -> Response<warp::hyper::Body> {
    let headers = headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let (behaviour, index) = {
        let mut state = state.lock().expect("receiver state");
        let behaviour = state.behaviour.clone().unwrap_or(Behaviour::Ok);
        let status = match &behaviour {
            Behaviour::Ok | Behaviour::HugeBody(_) => Some(200),
            Behaviour::FailFirst(n) => {
                let seen = state.received.len();
                Some(if seen < *n { 500 } else { 200 })
            }
            Behaviour::Status(status) => Some(*status),
            Behaviour::Redirect => Some(302),
            Behaviour::Hang => None,
        };
        state.received.push(Received {
            headers,
            body,
            status,
            at: Instant::now(),
        });
        (behaviour, state.received.len() - 1)
    };
    arrived.notify_waiters();
    let status = state.lock().expect("receiver state").received[index].status;
    let reply = Response::builder();
    match (behaviour, status) {
        (Behaviour::Hang, _) | (_, None) => std::future::pending().await,
        (Behaviour::Redirect, _) => reply
            .status(StatusCode::FOUND)
            .header("location", "/elsewhere?token=hidden")
            .body("moved".into()),
        (Behaviour::HugeBody(bytes), _) => reply.body(vec![b'x'; bytes].into()),
        (_, Some(status)) => reply
            .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .body(format!("answered {status}").into()),
    }
    .expect("a valid response")
}
