//! The service wrapper that makes a drain lose nothing.
//!
//! actix's own graceful stop will not read a request that already sits in a keep-alive
//! connection's socket buffer, and drops connections still queued for a worker. The runtime
//! drains differently: it stops accepting (`pause`), then responses carry `Connection: close`
//! so each client finishes its current exchange and reconnects (to the new generation), and
//! the runtime waits until this process's connections are gone. How many keep-alive
//! connections may be asked to close at a time is a budget the control thread sets (see
//! [`crate::decide::close_allowance`]): ten thousand clients asked at once would reconnect in
//! one burst, and re-establishing them would take the whole machine for half a second. For that it
//! counts open connections (a guard in the connection's extensions) and requests whose response
//! body has not been sent yet (a guard inside the body), in one process-wide tracker.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{AppConfig, Extensions, Response, Service, ServiceFactory};
use actix_web::http::ConnectionType;
use actix_web::web::Bytes;
use actix_web::HttpServer;

/// An application's service factory, as `HttpServer::new` accepts it: what an actix-web `App`
/// is. Implemented for every type that qualifies; it only names the bounds once.
pub trait AppFactory<B>:
    ServiceFactory<
        actix_http::Request,
        Config = AppConfig,
        Error: Into<actix_web::Error> + 'static,
        InitError: fmt::Debug,
        Response: Into<Response<B>> + 'static,
        Service: Service<actix_http::Request, Future: 'static> + 'static,
    > + 'static
{
}

impl<S, B> AppFactory<B> for S where
    S: ServiceFactory<
            actix_http::Request,
            Config = AppConfig,
            Error: Into<actix_web::Error> + 'static,
            InitError: fmt::Debug,
            Response: Into<Response<B>> + 'static,
            Service: Service<actix_http::Request, Future: 'static> + 'static,
        > + 'static
{
}

/// The one tracker of this process (the runtime owns process-wide signals, so there is one).
pub(crate) static TRACKER: Tracker = Tracker::new();

/// Counts of what this process is still serving.
///
/// Every request updates the counts, on whichever worker thread serves it, so each thread
/// counts in its own [`Shard`] (one cache line each): with one shared set of counters the
/// workers would bounce that cache line between cores on every request. The control thread
/// sums the shards when it needs a count, which is rare (every few ms while draining).
pub(crate) struct Tracker {
    /// Read on every response; written once per drain. Alone on its cache line.
    draining: Padded<AtomicBool>,
    /// While draining: how many more keep-alive connections may be asked to close.
    close_budget: Padded<AtomicUsize>,
    /// Keep-alive connections asked to close, ever.
    closes_asked: AtomicUsize,
    /// When the current drain began (see [`Tracker::touch`]), in nanoseconds since [`epoch`].
    touched: AtomicU64,
    /// One per thread that ever counted something; never removed (a few per worker thread).
    shards: Mutex<Vec<&'static Shard>>,
}

/// Keeps a value on its own cache line (128 bytes: two lines, for adjacent-line prefetch).
#[repr(align(128))]
struct Padded<T>(T);

/// The counts of one thread.
#[repr(align(128))]
struct Shard {
    connections: AtomicUsize,
    /// Connections ever opened on this thread.
    opened: AtomicUsize,
    in_flight: AtomicUsize,
    /// Responses finished on this thread while draining.
    served: AtomicUsize,
    /// When the last response of this thread finished while draining, in nanoseconds since
    /// [`epoch`].
    last_done: AtomicU64,
}

thread_local! {
    static SHARD: &'static Shard = TRACKER.new_shard();
}

/// This thread's shard.
fn shard() -> &'static Shard {
    SHARD.with(|s| *s)
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Tracker {
    const fn new() -> Self {
        Tracker {
            draining: Padded(AtomicBool::new(false)),
            close_budget: Padded(AtomicUsize::new(0)),
            closes_asked: AtomicUsize::new(0),
            touched: AtomicU64::new(0),
            shards: Mutex::new(Vec::new()),
        }
    }

    fn new_shard(&self) -> &'static Shard {
        let shard: &'static Shard = Box::leak(Box::new(Shard {
            connections: AtomicUsize::new(0),
            opened: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            last_done: AtomicU64::new(0),
        }));
        self.shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(shard);
        shard
    }

    /// Sum of `count` over every shard.
    fn sum(&self, count: impl Fn(&Shard) -> usize) -> usize {
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards.iter().map(|s| count(s)).sum()
    }

    /// From now on responses ask their clients to close the connection, as many as the
    /// close budget allows (none until [`Tracker::set_close_budget`]).
    pub(crate) fn set_draining(&self, draining: bool) {
        self.close_budget.0.store(0, Ordering::SeqCst);
        self.draining.0.store(draining, Ordering::SeqCst);
    }

    /// How many more keep-alive connections may be asked to close, from now on.
    pub(crate) fn set_close_budget(&self, budget: usize) {
        self.close_budget.0.store(budget, Ordering::SeqCst);
    }

    /// Keep-alive connections asked to close so far (ever; a drain counts from its start).
    pub(crate) fn closes_asked(&self) -> usize {
        self.closes_asked.load(Ordering::Relaxed)
    }

    /// Whether the response to a request on a keep-alive connection should close it: while
    /// draining, if the budget allows (and then it takes one from the budget).
    fn take_close(&self) -> bool {
        let taken = self.draining()
            && self
                .close_budget
                .0
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_ok();
        if taken {
            self.closes_asked.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    fn draining(&self) -> bool {
        self.draining.0.load(Ordering::Relaxed)
    }

    /// Connections this process has ever opened.
    pub(crate) fn opened(&self) -> usize {
        self.sum(|s| s.opened.load(Ordering::Relaxed))
    }

    /// Open connections of this process.
    pub(crate) fn connections(&self) -> usize {
        self.sum(|s| s.connections.load(Ordering::SeqCst))
    }

    /// Responses finished (sent or abandoned) while draining, in every drain so far.
    pub(crate) fn served(&self) -> usize {
        self.sum(|s| s.served.load(Ordering::Relaxed))
    }

    /// Requests whose response has not been completely sent.
    pub(crate) fn in_flight(&self) -> usize {
        self.sum(|s| s.in_flight.load(Ordering::SeqCst))
    }

    /// How long no request has been in flight in this drain (zero while one is; `in_flight`
    /// as just counted by [`Tracker::in_flight`]): since the last response finished while
    /// draining, or since the drain began ([`Tracker::touch`]).
    pub(crate) fn idle_for(&self, in_flight: usize) -> Duration {
        if in_flight > 0 {
            return Duration::ZERO;
        }
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let done = shards
            .iter()
            .map(|s| s.last_done.load(Ordering::SeqCst))
            .chain([self.touched.load(Ordering::SeqCst)])
            .max()
            .unwrap_or(0);
        Duration::from_nanos(now_nanos().saturating_sub(done))
    }

    /// Marks the start of an idle period (used when a drain begins with nothing in flight).
    pub(crate) fn touch(&self) {
        self.touched.store(now_nanos(), Ordering::SeqCst);
    }
}

/// Lives in a connection's extensions; counts the connection while it is open (in the
/// shard of the thread that opened it, wherever it is dropped).
struct ConnectionGuard(&'static Shard);

impl ConnectionGuard {
    fn new() -> Self {
        let shard = shard();
        shard.connections.fetch_add(1, Ordering::SeqCst);
        shard.opened.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(shard)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `on_connect` callback the runtime installs: counts the connection, then calls the
/// application's own callback, if any.
pub(crate) fn on_connect(user: Option<&OnConnect>, io: &dyn std::any::Any, ext: &mut Extensions) {
    ext.insert(ConnectionGuard::new());
    if let Some(user) = user {
        user(io, ext);
    }
}

/// An application `on_connect` callback (see [`crate::Endless::on_connect`]).
pub(crate) type OnConnect = Box<dyn Fn(&dyn std::any::Any, &mut Extensions) + Send + Sync>;

/// Counts one request until its response body is dropped.
struct InFlightGuard(&'static Shard);

impl InFlightGuard {
    fn new() -> Self {
        let shard = shard();
        shard.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(shard)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        // Only a drain reads when the last response finished and how many were served (it
        // starts with `touch` and its own count of `served`): a process that serves does not
        // pay for a clock read and two more atomic writes on every response.
        if TRACKER.draining() {
            self.0.last_done.store(now_nanos(), Ordering::SeqCst);
            self.0.served.fetch_add(1, Ordering::Relaxed);
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is dropped (sent
    /// or abandoned).
    pub struct CountedBody<B> {
        #[pin]
        body: B,
        guard: InFlightGuard,
    }
}

impl<B: MessageBody> MessageBody for CountedBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.project().body.poll_next(cx)
    }
}

/// The runtime's wrapper around the application's service factory.
pub struct DrainApp<S, B> {
    inner: S,
    _body: PhantomData<fn() -> B>,
}

/// The service built by [`DrainApp`].
pub struct DrainService<S, B> {
    inner: S,
    _body: PhantomData<fn() -> B>,
}

type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> ServiceFactory<actix_http::Request> for DrainApp<S, B>
where
    S: ServiceFactory<actix_http::Request, Config = AppConfig>,
    S::Future: 'static,
    S::Service: 'static,
    S::Response: Into<Response<B>>,
    B: MessageBody,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Config = AppConfig;
    type Service = DrainService<S::Service, B>;
    type InitError = S::InitError;
    type Future = LocalBoxFuture<Result<Self::Service, Self::InitError>>;

    fn new_service(&self, cfg: AppConfig) -> Self::Future {
        let fut = self.inner.new_service(cfg);
        Box::pin(async move {
            fut.await.map(|inner| DrainService {
                inner,
                _body: PhantomData,
            })
        })
    }
}

impl<S, B> Service<actix_http::Request> for DrainService<S, B>
where
    S: Service<actix_http::Request>,
    S::Future: 'static,
    S::Response: Into<Response<B>>,
    B: MessageBody,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = Counted<S::Future, B>;

    actix_web::dev::forward_ready!(inner);

    fn call(&self, req: actix_http::Request) -> Self::Future {
        Counted {
            // HTTP/2 has no `Connection: close`: its connections must not use up the budget.
            keep_alive: req.head().version <= actix_web::http::Version::HTTP_11
                && req.head().connection_type() == ConnectionType::KeepAlive,
            guard: Some(InFlightGuard::new()),
            fut: self.inner.call(req),
            _body: PhantomData,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`DrainService`]: moves the in-flight guard into the body and
    /// asks the client to close the connection while draining.
    pub struct Counted<F, B> {
        // Whether the client asked to keep the connection (HTTP/1.1 default).
        keep_alive: bool,
        guard: Option<InFlightGuard>,
        #[pin]
        fut: F,
        _body: PhantomData<fn() -> B>,
    }
}

impl<F, R, E, B> Future for Counted<F, B>
where
    F: Future<Output = Result<R, E>>,
    R: Into<Response<B>>,
{
    type Output = Result<Response<CountedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res: Response<B> = match this.fut.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(res)) => res.into(),
        };
        let guard = this.guard.take().unwrap_or_else(InFlightGuard::new);
        let mut res = res.map_body(|_, body| CountedBody { body, guard });
        // Not on a protocol switch (a WebSocket handshake): its `Connection: upgrade` must stay.
        // A client closing anyway (`Connection: close`, HTTP/1.0) takes nothing from the budget.
        if *this.keep_alive
            && res.status() != actix_web::http::StatusCode::SWITCHING_PROTOCOLS
            && TRACKER.take_close()
        {
            res.head_mut().set_connection_type(ConnectionType::Close);
        }
        Poll::Ready(Ok(res))
    }
}

/// The application factory the runtime registers; read back by [`make_app`] in every worker.
static FACTORY: Mutex<Option<Box<dyn std::any::Any + Send>>> = Mutex::new(None);

/// An application factory as the workers call it: builds the application's service factory.
pub(crate) type Factory<S> = Box<dyn Fn() -> S + Send>;

/// Stores the application factory for the workers of the runtime about to start.
pub(crate) fn register_factory<S: 'static>(factory: Factory<S>) {
    *FACTORY.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(factory));
}

/// Builds one worker's application: the registered factory's app inside [`DrainApp`].
///
/// A plain `fn` (not a closure) so that the server type can be named in
/// [`crate::Endless::configure`].
pub(crate) fn make_app<S: 'static, B>() -> DrainApp<S, B> {
    let factory = FACTORY.lock().unwrap_or_else(|e| e.into_inner());
    let inner = factory
        .as_ref()
        .and_then(|f| f.downcast_ref::<Factory<S>>())
        // The runtime registers the factory of this very type before it starts any worker, and
        // only one runtime runs per process.
        .expect("actix-endless: application factory registered before the workers start")(
    );
    DrainApp {
        inner,
        _body: PhantomData,
    }
}

/// The `HttpServer` type the runtime builds around an application whose service factory is `S`
/// and body type is `B`: what [`crate::Endless::configure`] receives and returns.
pub type Server<S, B> =
    HttpServer<fn() -> DrainApp<S, B>, DrainApp<S, B>, DrainApp<S, B>, CountedBody<B>>;
