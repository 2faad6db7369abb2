//! The VPC API server: UCloud's dialect over HTTP/1.1 on TCP (in the API's own namespace),
//! the lab's control and state dump on a Unix socket (reachable from any namespace), and the
//! flow-table pusher that programs the fabric's SDN ([`crate::lab::sdn`]) a configurable delay
//! after each API success, in the order the API answered.
//!
//! A call goes: parameters (form, JSON or query) → `Action` (160) → signature (170 missing,
//! 172 unknown `PublicKey`, 171 wrong) → rate limit (153) → the VPC model (161 for an action it
//! does not serve) → latency → the answer, always HTTP 200.
//!
//! The control socket takes one JSON line and answers one: `{"op": "state"}` (the VPC, the
//! flow table as the fabric holds it, pushes pending, the SDN's counters, calls by action and
//! RetCode, faults) or `{"op": "faults", "faults": {...}}` (any of [`Faults`]' fields).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use super::dialect::{parse_form, parse_json, reply, signature, ApiError, BodyError, Params, RetCode};
use super::vpc::{ConfigError, Faults, FlowChange, Vpc, VpcConfig};
use crate::lab::sdn::{self, FlowTable, SdnError};

/// `vpc-lab vpc-api`'s arguments.
#[derive(Debug, Clone)]
pub struct ServerArgs {
    /// The VPC ([`VpcConfig`], JSON).
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub control: PathBuf,
    /// The fabric's namespace, whose SDN this server programs; none: the flow table is kept
    /// only in memory (a VPC without a data plane).
    pub fabric: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("reading the VPC configuration {0}: {1}")]
    ReadConfig(PathBuf, std::io::Error),
    #[error("the VPC configuration {0} is not valid JSON: {1}")]
    ParseConfig(PathBuf, serde_json::Error),
    #[error("the VPC configuration: {0}")]
    Vpc(#[from] ConfigError),
    #[error("programming the SDN: {0}")]
    Sdn(#[from] SdnError),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
}

/// A flow-table push: changes the fabric makes at `due`.
struct Push {
    due: Instant,
    changes: Vec<FlowChange>,
}

#[derive(Default)]
struct FlowState {
    table: FlowTable,
    pending: usize,
    applied: u64,
    last_due: Option<Instant>,
    last_error: Option<String>,
}

struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// One call's token at `rate` per second, bursts up to a second's worth.
    fn take(&mut self, now: Instant, rate: Option<f64>) -> bool {
        let Some(rate) = rate else { return true };
        let burst = rate.max(1.0);
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Shared {
    vpc: Mutex<Vpc>,
    faults: Mutex<Faults>,
    bucket: Mutex<TokenBucket>,
    flow: Mutex<FlowState>,
    /// Calls answered, by (action, RetCode).
    calls: Mutex<BTreeMap<(String, u32), u64>>,
    pushes: mpsc::UnboundedSender<Push>,
    fabric: Option<String>,
}

/// A poisoned lock means a panic elsewhere already; the data is still the best there is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    /// Authenticates, rate-limits and runs one call; returns its action and outcome.
    fn call(&self, p: &Params) -> (String, Result<Value, ApiError>) {
        let Some(action) = p.get("Action").cloned() else {
            return (String::new(), Err(ApiError::new(RetCode::MissingAction, "Missing Action")));
        };
        let result = self.authorised_call(&action, p);
        let code = result.as_ref().map_or_else(|e| e.code.code(), |_| 0);
        *lock(&self.calls).entry((action.clone(), code)).or_default() += 1;
        (action, result)
    }

    fn authorised_call(&self, action: &str, p: &Params) -> Result<Value, ApiError> {
        let Some(given) = p.get("Signature") else {
            return Err(ApiError::new(RetCode::MissingSignature, "Missing Signature"));
        };
        let mut vpc = lock(&self.vpc);
        let private_key = p.get("PublicKey").and_then(|k| vpc.private_key(k));
        let Some(private_key) = private_key else {
            return Err(ApiError::new(RetCode::NoSuchUser, "User Not Exists"));
        };
        if !signature(p, private_key).eq_ignore_ascii_case(given) {
            return Err(ApiError::new(RetCode::BadSignature, "Signature VerifyAC Error"));
        }
        let faults = self.faults();
        vpc.set_pool_size(faults.pool_size);
        if !lock(&self.bucket).take(Instant::now(), faults.rate_per_sec) {
            return Err(ApiError::new(RetCode::Throttled, "API request throttled (rate limit)"));
        }
        let Some(result) = vpc.call(action, p) else {
            return Err(ApiError::new(RetCode::NoSuchAction, format!("Action [{action}] not exists")));
        };
        let (fields, changes) = result?;
        if !changes.is_empty() {
            // Queued while the VPC is still locked: pushes reach the fabric in answer order.
            let mut flow = lock(&self.flow);
            let due = (Instant::now() + Duration::from_millis(faults.push_delay_ms))
                .max(flow.last_due.unwrap_or_else(Instant::now));
            flow.last_due = Some(due);
            flow.pending += 1;
            let _ = self.pushes.send(Push { due, changes });
        }
        Ok(fields)
    }

    async fn state(&self) -> Value {
        let (entries, pending, applied, last_error) = {
            let flow = lock(&self.flow);
            (flow.table.entries().clone(), flow.pending, flow.applied, flow.last_error.clone())
        };
        let counters = match self.fabric.clone() {
            Some(ns) => match tokio::task::spawn_blocking(move || sdn::counters(&ns)).await {
                Ok(Ok(c)) => json!(c),
                Ok(Err(e)) => json!({"error": e.to_string()}),
                Err(e) => json!({"error": e.to_string()}),
            },
            None => Value::Null,
        };
        let calls: Vec<Value> = lock(&self.calls)
            .iter()
            .map(|((action, code), n)| json!({"action": action, "ret_code": code, "count": n}))
            .collect();
        json!({
            "vpc": lock(&self.vpc).snapshot(),
            "faults": self.faults(),
            "flow_table": entries,
            "pending_pushes": pending,
            "pushes_applied": applied,
            "last_push_error": last_error,
            "counters": counters,
            "calls": calls,
        })
    }
}

/// Runs the server until the process is killed.
pub fn run(args: ServerArgs) -> Result<(), ServerError> {
    let text = std::fs::read(&args.config).map_err(|e| ServerError::ReadConfig(args.config.clone(), e))?;
    let config: VpcConfig =
        serde_json::from_slice(&text).map_err(|e| ServerError::ParseConfig(args.config.clone(), e))?;
    let faults = config.faults.clone();
    let vpc = Vpc::new(config)?;
    let mut flow = FlowState::default();
    let fixed: Vec<FlowChange> = vpc.fixed_entries().into_iter().map(FlowChange::Add).collect();
    let script = flow.table.apply(&fixed);
    if let Some(ns) = &args.fabric {
        sdn::run_nft(ns, &sdn::ruleset(vpc.config().gateway_port.as_deref(), &vpc.prefixes()))?;
        if let Some(script) = script {
            sdn::run_nft(ns, &script)?;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ServerError::Io("starting tokio", e))?;
    runtime.block_on(async move {
        let (pushes, queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            vpc: Mutex::new(vpc),
            bucket: Mutex::new(TokenBucket {
                tokens: faults.rate_per_sec.unwrap_or(1.0).max(1.0),
                last: Instant::now(),
            }),
            faults: Mutex::new(faults),
            flow: Mutex::new(flow),
            calls: Mutex::new(BTreeMap::new()),
            pushes,
            fabric: args.fabric.clone(),
        });
        let api = TcpListener::bind(args.listen).await.map_err(|e| ServerError::Io("binding the API's address", e))?;
        let _ = std::fs::remove_file(&args.control);
        let control =
            UnixListener::bind(&args.control).map_err(|e| ServerError::Io("binding the control socket", e))?;
        tokio::spawn(push_flows(shared.clone(), queue));
        tokio::spawn(serve_control(shared.clone(), control));
        println!("vpc-api: UCloud's VPC API on http://{}, control on {}", args.listen, args.control.display());
        serve_api(shared, api).await
    })
}

async fn serve_api(shared: Arc<Shared>, listener: TcpListener) -> Result<(), ServerError> {
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| ServerError::Io("accepting", e))?;
        if shared.faults().down {
            drop(stream);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(shared.clone(), req));
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// Bodies larger than this are not UCloud calls.
const MAX_BODY: usize = 1 << 20;

async fn answer(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut params = Params::new();
    let query = req.uri().query().unwrap_or("").to_string();
    let is_json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let parsed = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            parse_form(&query, &mut params).and_then(|()| match (is_json, body.is_empty()) {
                (_, true) => Ok(()),
                (true, false) => parse_json(&body, &mut params),
                (false, false) => {
                    std::str::from_utf8(&body).map_err(|_| BodyError::NotUtf8).and_then(|t| parse_form(t, &mut params))
                }
            })
        }
        Err(_) => Err(BodyError::TooLarge),
    };
    let (action, result) = match parsed {
        Ok(()) => shared.call(&params),
        Err(e) => {
            (params.get("Action").cloned().unwrap_or_default(), Err(ApiError::new(RetCode::BadParams, e.to_string())))
        }
    };
    let latency = shared.faults().latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let body = reply(&action, result).to_string();
    let response = Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("X-UCLOUD-REQUEST-UUID", format!("lab-{:016x}", rand_id()))
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response");
    Ok(response)
}

/// A request id: unique enough for a lab (time and a counter).
fn rand_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    now ^ NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed).rotate_left(48)
}

/// Applies pushes when they are due, those due together in one nft transaction.
async fn push_flows(shared: Arc<Shared>, mut incoming: mpsc::UnboundedReceiver<Push>) {
    let mut queue: VecDeque<Push> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match incoming.recv().await {
                Some(push) => queue.push_back(push),
                None => return,
            }
        }
        let due = queue.front().expect("not empty").due;
        tokio::time::sleep_until(due).await;
        while let Ok(push) = incoming.try_recv() {
            queue.push_back(push);
        }
        let now = Instant::now();
        let mut changes = Vec::new();
        let mut count = 0;
        while queue.front().is_some_and(|p| p.due <= now) {
            changes.extend(queue.pop_front().expect("not empty").changes);
            count += 1;
        }
        let script = lock(&shared.flow).table.apply(&changes);
        let error = match (shared.fabric.clone(), script) {
            (Some(ns), Some(script)) => match tokio::task::spawn_blocking(move || sdn::run_nft(&ns, &script)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            },
            _ => None,
        };
        let mut flow = lock(&shared.flow);
        flow.pending -= count;
        flow.applied += count as u64;
        if let Some(e) = error {
            eprintln!("vpc-api: flow-table push failed: {e}");
            flow.last_error = Some(e);
        }
    }
}

async fn serve_control(shared: Arc<Shared>, listener: UnixListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = control(shared, stream).await;
        });
    }
}

async fn control(shared: Arc<Shared>, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(1 << 16)).read_line(&mut line).await?;
    let request: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    let answer = match request["op"].as_str() {
        Some("state") => shared.state().await,
        Some("faults") => {
            let mut current = serde_json::to_value(shared.faults()).expect("faults serialise");
            if let (Value::Object(now), Value::Object(new)) = (&mut current, &request["faults"]) {
                now.extend(new.clone());
            }
            match serde_json::from_value::<Faults>(current) {
                Ok(faults) => {
                    *lock(&shared.faults) = faults.clone();
                    json!({"faults": faults})
                }
                Err(e) => json!({"error": format!("faults: {e}")}),
            }
        }
        _ => json!({"error": format!("unknown request {line:?}: ops are state and faults")}),
    };
    write.write_all(format!("{answer}\n").as_bytes()).await?;
    write.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_seconds_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket { tokens: 5.0, last: start };
        let allowed = (0..10).filter(|_| bucket.take(start, Some(5.0))).count();
        assert_eq!(allowed, 5);
        assert!(!bucket.take(start + Duration::from_millis(100), Some(5.0)));
        assert!(bucket.take(start + Duration::from_millis(200), Some(5.0)));
        assert!(bucket.take(start, None), "no limit configured");
    }
}
