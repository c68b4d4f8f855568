//! The hit path: the library and the axum layer against a raw `GET` of the
//! same bytes on the redis crate's own connection type
//! (`ConnectionManager`, or `ClusterConnection` with `--redis-cluster`).

use crate::stats::{histogram, med_fmt, median, met, record, us};
use crate::{Args, NS};
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use smartcache::axum::{CacheLayer, X_CACHE};
use smartcache::{Cache, Error};
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;

#[derive(Serialize, Deserialize)]
struct Product {
    id: i64,
    name: String,
    description: String,
    price_cents: i64,
    tags: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    RawBytes,
    LibBytes,
    RawJson,
    LibJson,
    AxumRaw,
    AxumLayer,
    LocalBytes,
    LocalJson,
    AxumLocal,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::RawBytes => "raw GET (bytes)",
            Variant::LibBytes => "`get_or_compute_bytes` hit",
            Variant::RawJson => "raw GET + serde_json decode",
            Variant::LibJson => "`get_or_compute::<Product>` hit",
            Variant::AxumRaw => "axum handler doing a raw GET",
            Variant::AxumLayer => "axum `CacheLayer` hit",
            Variant::LocalBytes => "`get_or_compute_bytes` local hit",
            Variant::LocalJson => "`get_or_compute::<Product>` local hit",
            Variant::AxumLocal => "axum `CacheLayer` local hit",
        }
    }
}

/// Pairs: (baseline, smartcache).
const PAIRS: [(Variant, Variant); 3] = [
    (Variant::RawBytes, Variant::LibBytes),
    (Variant::RawJson, Variant::LibJson),
    (Variant::AxumRaw, Variant::AxumLayer),
];

/// Pairs: (baseline, smartcache with the local tier on).
const LOCAL_PAIRS: [(Variant, Variant); 3] = [
    (Variant::RawBytes, Variant::LocalBytes),
    (Variant::RawJson, Variant::LocalJson),
    (Variant::AxumRaw, Variant::AxumLocal),
];

/// The baseline's connection: the redis crate's, without smartcache.
#[derive(Clone)]
enum Raw {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Raw {
    async fn get(&self, key: &str) -> redis::RedisResult<Vec<u8>> {
        match self.clone() {
            Raw::Single(mut con) => con.get(key).await,
            Raw::Cluster(mut con) => con.get(key).await,
        }
    }
}

struct Ctx {
    raw: Raw,
    cache: Cache,
    local: Cache,
    raw_app: Router,
    layer_app: Router,
    local_app: Router,
    value_key: String,
}

impl Ctx {
    async fn op(&self, v: Variant) {
        match v {
            Variant::RawBytes => {
                let b: Vec<u8> = self.raw.get(&self.value_key).await.expect("GET");
                std::hint::black_box(b);
            }
            Variant::RawJson => {
                let b: Vec<u8> = self.raw.get(&self.value_key).await.expect("GET");
                let p: Product = serde_json::from_slice(&b).expect("decode");
                std::hint::black_box(p);
            }
            Variant::LibBytes | Variant::LocalBytes => {
                let cache = if v == Variant::LibBytes {
                    &self.cache
                } else {
                    &self.local
                };
                let b = cache
                    .get_or_compute_bytes::<Error, _, _>("hit", [], || async {
                        unreachable!("a miss in the hit benchmark")
                    })
                    .await
                    .expect("hit");
                std::hint::black_box(b);
            }
            Variant::LibJson | Variant::LocalJson => {
                let cache = if v == Variant::LibJson {
                    &self.cache
                } else {
                    &self.local
                };
                let p: Product = cache
                    .get_or_compute::<Product, Error, _, _>("hit", [], || async {
                        unreachable!("a miss in the hit benchmark")
                    })
                    .await
                    .expect("hit");
                std::hint::black_box(p);
            }
            Variant::AxumRaw | Variant::AxumLayer | Variant::AxumLocal => {
                let (app, path) = match v {
                    Variant::AxumRaw => (&self.raw_app, "/raw"),
                    Variant::AxumLayer => (&self.layer_app, "/p"),
                    _ => (&self.local_app, "/p"),
                };
                let req = Request::get(path).body(Body::empty()).expect("request");
                let resp = app.clone().oneshot(req).await.expect("infallible");
                if v != Variant::AxumRaw {
                    assert_eq!(resp.headers()[X_CACHE], "hit");
                }
                let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .expect("body");
                std::hint::black_box(body);
            }
        }
    }
}

fn fmt(s: &[Sample]) -> String {
    format!(
        "{} / {} / {}",
        med_fmt(s.iter().map(|s| s.p50).collect(), 1),
        med_fmt(s.iter().map(|s| s.p99).collect(), 1),
        med_fmt(s.iter().map(|s| s.ops_per_s).collect(), 0)
    )
}

/// An app serving `body` at `/p` behind a `CacheLayer` on `cache`, its
/// entry filled.
async fn product_app(body: &[u8], cache: &Cache) -> anyhow::Result<Router> {
    let served = body.to_vec();
    let app = Router::new()
        .route(
            "/p",
            get(move || {
                let b = served.clone();
                async move { ([("content-type", "application/json")], b) }
            }),
        )
        .route_layer(CacheLayer::new(cache.clone()));
    let _ = app
        .clone()
        .oneshot(Request::get("/p").body(Body::empty())?)
        .await?;
    Ok(app)
}

struct Sample {
    p50: f64,
    p99: f64,
    ops_per_s: f64,
}

/// Local hits are ~100× faster: this many more of them, so that a run
/// lasts as long as the Redis ones rather than ~20 ms.
const LOCAL_OPS: usize = 20;

async fn measure(ctx: &Arc<Ctx>, v: Variant, tasks: usize, ops: usize) -> Sample {
    // Warm up: connections, script caches, allocator.
    for _ in 0..100 {
        ctx.op(v).await;
    }
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let ctx = ctx.clone();
        handles.push(tokio::spawn(async move {
            let mut h = histogram();
            for _ in 0..ops / tasks {
                let t = Instant::now();
                ctx.op(v).await;
                record(&mut h, t.elapsed());
            }
            (h, Instant::now())
        }));
    }
    // Up to the last op, not the merge of the histograms: that takes a
    // few ms, a tenth of a run of local hits.
    let mut all = histogram();
    let mut last = started;
    for h in handles {
        let (h, done) = h.await.expect("task");
        all.add(h).expect("same bounds");
        last = last.max(done);
    }
    let secs = (last - started).as_secs_f64();
    Sample {
        p50: us(&all, 0.5),
        p99: us(&all, 0.99),
        ops_per_s: all.len() as f64 / secs,
    }
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
    let raw = if args.redis_cluster {
        let seeds: Vec<&str> = args.redis_url.split(',').collect();
        Raw::Cluster(
            redis::cluster::ClusterClient::new(seeds)?
                .get_async_connection()
                .await?,
        )
    } else {
        Raw::Single(crate::redis_manager(&args.redis_url).await?)
    };
    let cache = Cache::builder(&args.redis_url)
        .namespace(NS)
        .cluster(args.redis_cluster)
        .build()
        .await?;
    let product = Product {
        id: 42,
        name: "Stoneware teapot, 1.2 l".into(),
        description: "Hand-glazed stoneware teapot with a stainless steel infuser.".into(),
        price_cents: 3_499,
        tags: vec!["kitchen".into(), "tea".into(), "gift".into()],
    };
    let body = serde_json::to_vec(&product)?;
    cache.set("hit", &product, []).await?;
    let value_key = cache.namespace().value_key("hit");
    let raw_for_app = raw.clone();
    let raw_key = value_key.clone();
    let raw_app = Router::new().route(
        "/raw",
        get(move || {
            let con = raw_for_app.clone();
            let key = raw_key.clone();
            async move {
                let b: Vec<u8> = con.get(&key).await.unwrap_or_default();
                ([("content-type", "application/json")], b)
            }
        }),
    );
    let local = Cache::builder(&args.redis_url)
        .namespace(NS)
        .cluster(args.redis_cluster)
        .local(64 << 20, 100_000)
        .build()
        .await?;
    while !local.local_stats().is_some_and(|s| s.serving) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let layer_app = product_app(&body, &cache).await?;
    let local_app = product_app(&body, &local).await?;
    let ctx = Arc::new(Ctx {
        raw,
        cache,
        local,
        raw_app,
        layer_app,
        local_app,
        value_key,
    });

    let (single_ops, multi_ops) = if args.quick {
        (2_000, 6_400)
    } else {
        (10_000, 64_000)
    };
    println!("## Hit path\n");
    println!(
        "{} B JSON value; {single_ops} sequential ops (1 task) and {multi_ops} ops over 64 tasks \
         per run; tokio multi-thread runtime; latency per op in µs; the baseline and smartcache \
         alternate within each run; median of {} runs.\n",
        body.len(),
        args.runs
    );
    println!(
        "| tasks | baseline | smartcache | baseline p50 / p99 / ops/s | smartcache p50 / p99 / ops/s | \
         p50 ratio | p99 ratio | throughput ratio | goal met |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut local_rows = Vec::new();
    for tasks in [1usize, 64] {
        let ops = if tasks == 1 { single_ops } else { multi_ops };
        for ((base, lib), (_, local)) in PAIRS.into_iter().zip(LOCAL_PAIRS) {
            let mut b = Vec::new();
            let mut l = Vec::new();
            let mut c = Vec::new();
            for _ in 0..args.runs {
                b.push(measure(&ctx, base, tasks, ops).await);
                l.push(measure(&ctx, lib, tasks, ops).await);
                c.push(measure(&ctx, local, tasks, ops * LOCAL_OPS).await);
            }
            let ratio = |x: &[Sample], f: fn(&Sample) -> f64| {
                median(b.iter().zip(x).map(|(b, x)| f(x) / f(b)).collect())
            };
            let (r50, r99, rt) = (
                ratio(&l, |s| s.p50),
                ratio(&l, |s| s.p99),
                ratio(&l, |s| s.ops_per_s),
            );
            println!(
                "| {tasks} | {} | {} | {} | {} | {r50:.2}× | {r99:.2}× | {rt:.2}× | {} |",
                base.name(),
                lib.name(),
                fmt(&b),
                fmt(&l),
                met(r50 <= 1.10 && r99 <= 1.10 && rt >= 0.90)
            );
            let speedup = 1.0 / ratio(&c, |s| s.p50);
            let gain = ratio(&c, |s| s.ops_per_s);
            let goal = if tasks == 1 {
                speedup >= 20.0
            } else {
                speedup >= 20.0 && gain >= 10.0
            };
            local_rows.push(format!(
                "| {tasks} | {} | {} | {} | {} | {speedup:.0}× | {gain:.1}× | {} |",
                base.name(),
                local.name(),
                fmt(&b),
                fmt(&c),
                met(goal)
            ));
        }
    }
    println!(
        "\nWith the local tier on (`CacheBuilder::local(64 MiB, 100,000)`), measured in the \
         same runs, interleaved with the two above; goal: a local hit ≥ 20× faster than the \
         baseline at p50, and ≥ 10× its throughput at 64 tasks; {LOCAL_OPS}× as many ops \
         per run as the baseline (a run of local hits would otherwise last ~20 ms).\n"
    );
    println!(
        "| tasks | baseline | smartcache, local tier | baseline p50 / p99 / ops/s | \
         local p50 / p99 / ops/s | p50 speed-up | throughput gain | goal met |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in local_rows {
        println!("{row}");
    }
    let hits = ctx.local.local_stats().map_or(0, |s| s.hits);
    println!("\n(local hits served: {hits}; the local variants never went to Redis after warm-up)");
    println!();
    Ok(())
}
