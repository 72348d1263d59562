use super::*;
use bytes::Bytes;
use tokio::sync::mpsc;

static NO_ARGUMENTS: std::sync::LazyLock<FieldTable> = std::sync::LazyLock::new(Default::default);

fn no_options() -> ConsumeOptions<'static> {
    ConsumeOptions {
        arguments: &NO_ARGUMENTS,
        prefetch: 0,
    }
}

fn msg(body: &'static str) -> Arc<Message> {
    Arc::new(Message {
        exchange: "".into(),
        routing_key: "q".into(),
        properties: Default::default(),
        raw_properties: Bytes::new(),
        body: Bytes::from_static(body.as_bytes()),
    })
}

/// A queue's host that is already gone: these tests neither dead-letter nor expire queues.
#[derive(Debug)]
struct NoHost;

impl QueueHost for NoHost {
    fn route_dead_letter(
        &self,
        _: &str,
        _: Arc<Message>,
        _: &mut Vec<Arc<Queue>>,
    ) -> Option<Arc<Message>> {
        None
    }

    fn remove_expired(&self, _: &Queue) {}
}

fn queue(args: QueueArgs) -> Arc<Queue> {
    Arc::new(Queue::new(QueueInit {
        name: "q",
        durable: false,
        owner: None,
        auto_delete: false,
        arguments: FieldTable::default(),
        args,
        vhost: Weak::<NoHost>::new(),
        store: None,
    }))
}

fn consumer(
    tag: &str,
    limit: u32,
    priority: i64,
) -> (Consumer, mpsc::UnboundedReceiver<QueueEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Consumer {
            handle: Arc::new(ConsumerHandle::new(tag.into(), false, limit, None)),
            channel: 1,
            conn_id: 1,
            exclusive: false,
            priority,
            sink: tx,
        },
        rx,
    )
}

fn bodies(rx: &mut mpsc::UnboundedReceiver<QueueEvent>) -> Vec<String> {
    let mut v = vec![];
    while let Ok(QueueEvent::Deliver { entry, .. }) = rx.try_recv() {
        v.push(String::from_utf8(entry.msg.body.to_vec()).unwrap());
    }
    v
}

#[test]
fn round_robin_within_prefetch() {
    let q = queue(QueueArgs::default());
    let (a, mut ra) = consumer("a", 2, 0);
    let (b, mut rb) = consumer("b", 1, 0);
    q.add_consumer(a, no_options(), "/").unwrap();
    q.add_consumer(b, no_options(), "/").unwrap();
    for m in ["1", "2", "3", "4"] {
        q.publish(msg(m));
    }
    assert_eq!(bodies(&mut ra), vec!["1", "3"]);
    assert_eq!(bodies(&mut rb), vec!["2"]);
    assert_eq!(q.message_count(), 1);
}

#[test]
fn higher_priority_consumers_first_while_they_have_credit() {
    let q = queue(QueueArgs::default());
    let (low, mut rl) = consumer("low", 10, 0);
    let (high, mut rh) = consumer("high", 2, 5);
    q.add_consumer(low, no_options(), "/").unwrap();
    q.add_consumer(high, no_options(), "/").unwrap();
    for m in ["1", "2", "3"] {
        q.publish(msg(m));
    }
    assert_eq!(bodies(&mut rh), vec!["1", "2"]);
    assert_eq!(bodies(&mut rl), vec!["3"]);
}

#[test]
fn single_active_consumer_gets_everything_until_it_leaves() {
    let q = queue(QueueArgs {
        single_active: true,
        ..Default::default()
    });
    let (a, mut ra) = consumer("a", 0, 0);
    let (b, mut rb) = consumer("b", 0, 0);
    let a_handle = a.handle.clone();
    q.add_consumer(a, no_options(), "/").unwrap();
    q.add_consumer(b, no_options(), "/").unwrap();
    q.publish(msg("1"));
    q.publish(msg("2"));
    assert_eq!(bodies(&mut ra), vec!["1", "2"]);
    q.remove_consumer(&a_handle);
    q.publish(msg("3"));
    assert_eq!(bodies(&mut rb), vec!["3"]);
}

#[test]
fn priority_levels_deliver_highest_first_fifo_within() {
    let q = queue(QueueArgs {
        max_priority: Some(5),
        ..Default::default()
    });
    let with = |b: &'static str, p: u8| {
        Arc::new(Message {
            properties: crate::protocol::Properties::new(
                amq_protocol::protocol::BasicProperties::default().with_priority(p),
            ),
            ..Arc::try_unwrap(msg(b)).unwrap()
        })
    };
    q.publish(with("low", 1));
    q.publish(with("high-a", 9));
    q.publish(with("high-b", 5));
    q.publish(with("none", 0));
    let order: Vec<_> = std::iter::from_fn(|| q.get(false))
        .map(|(e, _)| e.msg.body.clone())
        .collect();
    assert_eq!(order, [&b"high-a"[..], b"high-b", b"low", b"none"]);
}

#[test]
fn requeue_goes_back_to_the_original_position() {
    let q = queue(QueueArgs::default());
    for m in ["1", "2", "3"] {
        q.publish(msg(m));
    }
    let (first, _) = q.get(false).unwrap();
    let (second, _) = q.get(false).unwrap();
    q.requeue([second, first]);
    let order: Vec<_> = std::iter::from_fn(|| q.get(false))
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        order.iter().map(|e| &e.msg.body[..]).collect::<Vec<_>>(),
        [b"1", b"2", b"3"]
    );
    assert!(order[0].redelivered && order[1].redelivered && !order[2].redelivered);
}

#[test]
fn drop_head_and_reject_publish() {
    let q = queue(QueueArgs {
        max_length: Some(2),
        ..Default::default()
    });
    for m in ["1", "2", "3"] {
        assert_eq!(q.publish(msg(m)), Published::Accepted(None));
    }
    assert_eq!(q.get(false).unwrap().0.msg.body, "2");
    let r = queue(QueueArgs {
        max_length: Some(1),
        overflow: Overflow::RejectPublish,
        ..Default::default()
    });
    assert_eq!(r.publish(msg("1")), Published::Accepted(None));
    assert_eq!(r.publish(msg("2")), Published::Rejected);
    assert_eq!(r.message_count(), 1);
}

#[test]
fn requeue_into_a_full_queue_drops_from_the_head() {
    let q = queue(QueueArgs {
        max_length: Some(2),
        ..Default::default()
    });
    q.publish(msg("1"));
    q.publish(msg("2"));
    let (a, _) = q.get(false).unwrap();
    let (b, _) = q.get(false).unwrap();
    q.publish(msg("3"));
    q.publish(msg("4"));
    q.requeue([a, b]);
    assert_eq!(q.message_count(), 2);
    let left: Vec<_> = std::iter::from_fn(|| q.get(true))
        .map(|(e, _)| e.msg.body.clone())
        .collect();
    assert_eq!(left, ["3", "4"]);
}

#[test]
fn delivery_limit_counts_returns_and_sets_the_header() {
    let q = queue(QueueArgs {
        delivery_limit: Some(1),
        ..Default::default()
    });
    q.publish(msg("m"));
    let (e, _) = q.get(false).unwrap();
    q.requeue([e]);
    let (e, _) = q.get(false).unwrap();
    assert_eq!(e.delivery_count, 1);
    let h = e.msg.properties.headers().clone().unwrap();
    assert_eq!(
        h.inner().get("x-delivery-count"),
        Some(&AMQPValue::LongLongInt(1))
    );
    q.requeue([e]);
    assert!(
        q.get(false).is_none(),
        "over the limit: dead-lettered (dropped without a DLX)"
    );
}

#[test]
fn ttl_zero_is_deliver_now_or_never() {
    let q = queue(QueueArgs {
        message_ttl: Some(0),
        ..Default::default()
    });
    q.publish(msg("lost"));
    assert_eq!(q.message_count(), 0);
    let (c, mut rc) = consumer("c", 0, 0);
    q.add_consumer(c, no_options(), "/").unwrap();
    q.publish(msg("kept"));
    assert_eq!(bodies(&mut rc), vec!["kept"]);
}

#[test]
fn exclusive_consumer_conflicts() {
    let q = queue(QueueArgs::default());
    let (a, _ra) = consumer("a", 0, 0);
    q.add_consumer(a, no_options(), "/").unwrap();
    let (mut b, _rb) = consumer("b", 0, 0);
    b.exclusive = true;
    assert_eq!(q.add_consumer(b, no_options(), "/").unwrap_err().code, 403);
}
