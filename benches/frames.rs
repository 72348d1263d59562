//! Frame codec: decoding a basic.publish + content header + body, and writing a
//! basic.deliver with its content.

use std::hint::black_box;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, BasicProperties, basic};
use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use warren::protocol::{
    Frame, decode, encode_properties, write_content, write_deliver, write_method,
};

const FRAME_MAX: u32 = 131_072;

fn publish_bytes(size: usize) -> BytesMut {
    let mut out = BytesMut::new();
    write_method(
        &mut out,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "amq.direct".into(),
            routing_key: "orders.eu.created".into(),
            mandatory: false,
            immediate: false,
        })),
    );
    let props = encode_properties(
        &BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into()),
    );
    write_content(&mut out, 1, &props, &vec![7u8; size], FRAME_MAX);
    out
}

fn decode_publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_publish");
    for size in [16usize, 1024] {
        let wire = publish_bytes(size);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{size}B"), |b| {
            b.iter_batched_ref(
                || wire.clone(),
                |buf| {
                    let mut n = 0;
                    while let Some(f) = decode(buf, FRAME_MAX).expect("valid frames") {
                        if let Frame::Body { payload, .. } = &f {
                            n += payload.len();
                        }
                        black_box(f);
                    }
                    n
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn write_delivery(c: &mut Criterion) {
    let mut g = c.benchmark_group("write_deliver_content");
    let props = encode_properties(&BasicProperties::default().with_delivery_mode(2));
    for size in [16usize, 1024] {
        let body = vec![7u8; size];
        let mut out = BytesMut::with_capacity(4096);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                out.clear();
                write_deliver(&mut out, 1, "amq.ctag-1", 123_456, false, "", "orders");
                write_content(&mut out, 1, &props, black_box(&body), FRAME_MAX);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! { name = benches; config = config(); targets = decode_publish, write_delivery }
criterion_main!(benches);
