//! A local stand-in for the Comfy.org API that ComfyUI's paid API nodes call (`--comfy-api-base`), counting every
//! call and the credentials it came with (`X-API-KEY`, `Authorization: Bearer`; `comfy_api_nodes/apis/client.py`
//! `get_headers`). A BFL node posts `/proxy/bfl/<model>/generate` and gets `{id, polling_url}`; every other node
//! posts `/proxy/<provider>/<class>` here. Answers carry a `price`, which the fake ComfyUI reports as the node's
//! progress text (`Price: $…`), and, as Comfy.org's proxy does since Comfy-Org/ComfyUI#15091, what the call cost
//! in its credits (`X-Comfy-Credits-Used`, 211 credits a dollar) unless a test turns that off.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::routing::any;
use serde_json::json;
use tokio::net::TcpListener;

/// One call the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub api_key: Option<String>,
    pub bearer: Option<String>,
}

struct Shared {
    calls: Mutex<Vec<Call>>,
    price_usd: Mutex<f64>,
    /// Answer every call with this status (a moderation refusal, say).
    refuse: Mutex<Option<u16>>,
    report_credits: std::sync::atomic::AtomicBool,
    spent_usd: Mutex<f64>,
}

pub struct FakeComfyOrg {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeComfyOrg {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound");
        let shared = Arc::new(Shared {
            calls: Mutex::default(),
            price_usd: Mutex::new(0.06),
            refuse: Mutex::new(None),
            report_credits: std::sync::atomic::AtomicBool::new(true),
            spent_usd: Mutex::new(0.0),
        });
        let app = Router::new()
            .fallback(any(record))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`: what ComfyUI takes as `--comfy-api-base`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    pub fn call_count(&self) -> usize {
        self.shared.calls.lock().unwrap().len()
    }

    /// Refuse every call with `status` (`None`: answer again).
    pub fn set_refuse(&self, status: Option<u16>) {
        *self.shared.refuse.lock().unwrap() = status;
    }

    /// Whether answers carry `X-Comfy-Credits-Used` (an older Comfy.org's do not).
    pub fn set_report_credits(&self, on: bool) {
        self.shared
            .report_credits
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The dollars all calls cost, as the answers reported them (refused calls cost nothing).
    pub fn spent_usd(&self) -> f64 {
        *self.shared.spent_usd.lock().unwrap()
    }

    /// The price each answer reports.
    pub fn set_price(&self, usd: f64) {
        *self.shared.price_usd.lock().unwrap() = usd;
    }
}

impl Drop for FakeComfyOrg {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(State(shared): State<Arc<Shared>>, request: Request) -> axum::response::Response {
    // Only the API nodes' routes are calls that cost; a stray request (a port another test once held) is not one.
    if !request.uri().path().starts_with("/proxy/") {
        return http::StatusCode::NOT_FOUND.into_response();
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let call = Call {
        path: request.uri().path().to_owned(),
        api_key: header("x-api-key"),
        bearer: header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned)),
    };
    shared.calls.lock().unwrap().push(call);
    if let Some(status) = *shared.refuse.lock().unwrap() {
        let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
        return (
            status,
            axum::Json(json!({ "message": "content moderated" })),
        )
            .into_response();
    }
    let id = uuid::Uuid::new_v4().to_string();
    let price = *shared.price_usd.lock().unwrap();
    *shared.spent_usd.lock().unwrap() += price;
    let mut answer = axum::Json(json!({
        "id": id,
        "polling_url": format!("https://api.eu4.bfl.ai/v1/get_result?id={id}"),
        "price": price,
    }))
    .into_response();
    if shared
        .report_credits
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        let credits = format!("{}", price * 211.0);
        answer
            .headers_mut()
            .insert("x-comfy-credits-used", credits.parse().unwrap());
    }
    answer
}
