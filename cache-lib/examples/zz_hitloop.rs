use std::time::Instant;
use redis::AsyncCommands;
#[tokio::main]
async fn main() {
    let ns = format!("t_hitloop_{}", std::process::id());
    let cache = smartcache::Cache::builder("redis://127.0.0.1:6379/0").namespace(ns.clone()).build().await.unwrap();
    let v = serde_json::json!({"id":1,"name":"Product 1","price_cents":100});
    cache.set("product:1", &v, [smartcache::Dep::row("products", [1])]).await.unwrap();
    let client = redis::Client::open("redis://127.0.0.1:6379/0").unwrap();
    let mut raw = redis::aio::ConnectionManager::new(client).await.unwrap();
    let key = cache.namespace().value_key("product:1");
    let n = 20_000;
    for round in 0..2 {
        let t = Instant::now();
        for _ in 0..n {
            let b: Option<Vec<u8>> = raw.get(&key).await.unwrap();
            let _: serde_json::Value = serde_json::from_slice(&b.unwrap()).unwrap();
        }
        let rawt = t.elapsed() / n;
        let t = Instant::now();
        for _ in 0..n {
            let _: serde_json::Value = cache.get_or_compute("product:1", [smartcache::Dep::row("products", [1])], || async { Ok::<_, smartcache::Error>(serde_json::Value::Null) }).await.unwrap();
        }
        let ct = t.elapsed() / n;
        println!("round {round}: raw GET+decode {rawt:?}/op, get_or_compute hit {ct:?}/op");
    }
    cache.clear_all().await.unwrap();
}
