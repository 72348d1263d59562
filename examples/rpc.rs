//! Request/reply: a server task answers on `rpc_queue`; the client sends requests with
//! `reply_to` and `correlation_id` and waits for the matching replies.
//! `cargo run --example rpc` against a running broker (AMQP_URL to override).

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> Result<(), lapin::Error> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;

    let server = conn.create_channel().await?;
    server
        .queue_declare(
            "rpc_queue".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut requests = server
        .basic_consume(
            "rpc_queue".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(req)) = requests.next().await {
            let n: u64 = String::from_utf8_lossy(&req.data).parse().unwrap_or(0);
            let reply_to = req.properties.reply_to().clone().unwrap_or_default();
            let props = BasicProperties::default()
                .with_correlation_id(req.properties.correlation_id().clone().unwrap_or_default());
            let answer = (n * n).to_string();
            let _ = server
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    answer.as_bytes(),
                    props,
                )
                .await;
            let _ = req.ack(BasicAckOptions::default()).await;
        }
    });

    let client = conn.create_channel().await?;
    let replies = client
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut answers = client
        .basic_consume(
            replies.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for n in 1..=5u64 {
        let props = BasicProperties::default()
            .with_reply_to(replies.name().clone())
            .with_correlation_id(n.to_string().into());
        client
            .basic_publish(
                "".into(),
                "rpc_queue".into(),
                BasicPublishOptions::default(),
                n.to_string().as_bytes(),
                props,
            )
            .await?;
        let reply = answers.next().await.expect("reply stream open")?;
        println!(
            "{n}^2 = {} (correlation {:?})",
            String::from_utf8_lossy(&reply.data),
            reply.properties.correlation_id()
        );
    }
    conn.close(200, "done".into()).await
}
