//! Topic routing: binds `*.error` and `kern.#` and shows which messages each receives.
//! `cargo run --example topic` against a running broker (AMQP_URL to override).

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> Result<(), lapin::Error> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let mut queues = vec![];
    for pattern in ["*.error", "kern.#"] {
        let q = ch
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await?;
        ch.queue_bind(
            q.name().clone(),
            "amq.topic".into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        queues.push((pattern, q.name().clone()));
    }
    for key in ["kern.error", "app.error", "kern.info.disk", "app.info"] {
        ch.basic_publish(
            "amq.topic".into(),
            key.into(),
            BasicPublishOptions::default(),
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await?;
    }
    for (pattern, q) in queues {
        let mut got = vec![];
        while let Some(m) = ch
            .basic_get(q.clone(), BasicGetOptions { no_ack: true })
            .await?
        {
            got.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
        }
        println!("{pattern:>8} -> {got:?}");
    }
    conn.close(200, "done".into()).await
}
