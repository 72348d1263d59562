#!/usr/bin/perl
# AnyEvent::RabbitMQ round trip: connect, open a channel, declare an exchange and a
# queue, bind, publish, consume and check the message, cancel, delete, close the
# channel and the connection. Each step is one TAP test (Test::More); a step that
# fails ends the script (the rest are not run, and the plan reports them missing).
#
# Usage: perl roundtrip.t HOST PORT      (or AMQP_HOST / AMQP_PORT; guest/guest, vhost /)
#        prove conformance/perl          (with AMQP_HOST / AMQP_PORT set)
# AnyEvent::RabbitMQ sends the protocol header "AMQP 1 1 0 9"; RabbitMQ accepts it and
# answers with connection.start for 0-9-1.
use strict;
use warnings;

use Test::More;
use AnyEvent;
use AnyEvent::RabbitMQ;

my $host = $ARGV[0] // $ENV{AMQP_HOST} // '127.0.0.1';
my $port = $ARGV[1] // $ENV{AMQP_PORT} // 5672;
my $step_timeout = $ENV{PERL_STEP_TIMEOUT} // 10;

my $suffix   = sprintf('%d.%06d', $$, int(rand(1_000_000)));
my $exchange = "perl.rt.ex.$suffix";
my $queue    = "perl.rt.q.$suffix";
my $body     = "hello from AnyEvent::RabbitMQ $suffix";

plan tests => 12;
diag("AnyEvent::RabbitMQ $AnyEvent::RabbitMQ::VERSION against $host:$port");

# Runs one asynchronous step: $start->($ok, $fail) must call $ok->(@result) or
# $fail->($why). Returns (1, @result) or (0, $why); a step that neither succeeds nor
# fails within $step_timeout seconds fails.
sub step {
    my ($start) = @_;
    my $cv = AnyEvent->condvar;
    my $timer = AnyEvent->timer(
        after => $step_timeout,
        cb    => sub { $cv->send(0, "timed out after ${step_timeout}s") },
    );
    $start->(sub { $cv->send(1, @_) }, sub { $cv->send(0, why(@_)) });
    return $cv->recv;
}

# Something printable from a failure callback's arguments (strings, frames, or an
# AnyEvent::Handle followed by its error flag and message).
sub why {
    my @parts = map { why1($_) } grep { !(ref $_ && ref($_) =~ /^AnyEvent::Handle/) } @_;
    return @parts ? join(' ', @parts) : 'no reason given';
}

sub why1 {
    my ($x) = @_;
    return 'undef' unless defined $x;
    if (ref $x && eval { $x->can('method_frame') }) {
        my $m = $x->method_frame;
        my $code = eval { $m->reply_code } // '?';
        my $text = eval { $m->reply_text } // ref($m);
        return "$code $text";
    }
    return "$x";
}

# Asynchronous surprises (a channel or connection closed by the broker, a read error).
my @surprises;
sub surprise { push @surprises, why(@_) }

# A failed step ends the run; Test::More reports the tests that did not run.
sub check {
    my ($name, $ok, @rest) = @_;
    my $pass = ok($ok, $name);
    unless ($pass) {
        diag("$name: " . ($rest[0] // 'failed'));
        diag("asynchronous events: @surprises") if @surprises;
        exit(1);
    }
    return @rest;
}

# AnyEvent::RabbitMQ also runs on_cancel / on_close for a cancel or close the client
# itself asked for: only those that come before it did are surprises.
my ($cancelling, $closing_channel) = (0, 0);

my $ar = AnyEvent::RabbitMQ->new->load_xml_spec();

my ($ok, @r) = step(sub {
    my ($done, $fail) = @_;
    $ar->connect(
        host            => $host,
        port            => $port,
        user            => 'guest',
        pass            => 'guest',
        vhost           => '/',
        timeout         => $step_timeout,
        tune            => { heartbeat => 0 },
        on_success      => sub { $done->() },
        on_failure      => $fail,
        on_read_failure => sub { surprise('read failure:', @_); $fail->(@_) },
        on_return       => sub { surprise('returned message') },
        on_close        => sub { surprise('connection closed:', @_); $fail->(@_) },
    );
});
check('connect (protocol header AMQP 1 1 0 9, start/tune/open)', $ok, @r);
my $server = $ar->server_properties // {};
diag("server: " . ($server->{product} // '?') . ' ' . ($server->{version} // '?'));

($ok, my $ch) = step(sub {
    my ($done, $fail) = @_;
    $ar->open_channel(
        on_success => $done,
        on_failure => $fail,
        on_close   => sub { surprise('channel closed:', @_) unless $closing_channel },
    );
});
check('channel.open', $ok && ref $ch, $ch);

($ok, @r) = step(sub {
    my ($done, $fail) = @_;
    $ch->declare_exchange(
        exchange    => $exchange,
        type        => 'direct',
        durable     => 0,
        auto_delete => 0,
        on_success  => $done,
        on_failure  => $fail,
    );
});
check('exchange.declare', $ok, @r);

($ok, my $declared) = step(sub {
    my ($done, $fail) = @_;
    $ch->declare_queue(
        queue       => $queue,
        durable     => 0,
        exclusive   => 0,
        auto_delete => 0,
        on_success  => $done,
        on_failure  => $fail,
    );
});
check('queue.declare returns the queue name',
    $ok && $declared->method_frame->queue eq $queue,
    $ok ? 'declare-ok names ' . $declared->method_frame->queue : $declared);

($ok, @r) = step(sub {
    my ($done, $fail) = @_;
    $ch->bind_queue(
        queue       => $queue,
        exchange    => $exchange,
        routing_key => 'rk',
        on_success  => $done,
        on_failure  => $fail,
    );
});
check('queue.bind', $ok, @r);

# Consume first (basic.consume-ok), then publish; the delivery completes the step.
my $consumer_tag;
my $delivery_cv = AnyEvent->condvar;
($ok, my $consume_ok) = step(sub {
    my ($done, $fail) = @_;
    $ch->consume(
        queue      => $queue,
        no_ack     => 0,
        on_consume => sub { $delivery_cv->send(@_) },
        on_cancel  => sub { surprise('consumer cancelled by the broker') unless $cancelling },
        on_success => $done,
        on_failure => $fail,
    );
});
check('basic.consume', $ok && ($consumer_tag = $consume_ok->method_frame->consumer_tag),
    $consume_ok);

$ch->publish(
    exchange    => $exchange,
    routing_key => 'rk',
    body        => $body,
    header      => { content_type => 'text/plain', headers => { h => 'v' } },
);
($ok, my $msg) = step(sub {
    my ($done, $fail) = @_;
    $delivery_cv->cb(sub { $done->($_[0]->recv) });
});
check('basic.publish reaches the consumer', $ok && ref $msg eq 'HASH', $msg);

my $got  = $msg->{body}->payload;
my $hdr  = $msg->{header};
my $dlv  = $msg->{deliver}->method_frame;
my $good = $got eq $body
    && $dlv->exchange eq $exchange
    && $dlv->routing_key eq 'rk'
    && ($hdr->content_type // '') eq 'text/plain'
    && (($hdr->headers // {})->{h} // '') eq 'v';
check('delivered body, exchange, routing key and properties', $good,
    "body '$got' exchange '" . $dlv->exchange . "' rk '" . $dlv->routing_key . "'");
$ch->ack(delivery_tag => $dlv->delivery_tag);

$cancelling = 1;
($ok, @r) = step(sub {
    my ($done, $fail) = @_;
    $ch->cancel(consumer_tag => $consumer_tag, on_success => $done, on_failure => $fail);
});
check('basic.cancel', $ok, @r);

# After ack and cancel the queue is empty and has no consumer; delete it (if-empty
# would fail on an unacked message) and the exchange.
($ok, my $qok) = step(sub {
    my ($done, $fail) = @_;
    $ch->delete_queue(queue => $queue, if_empty => 1, if_unused => 1,
        on_success => $done, on_failure => $fail);
});
($ok, @r) = ($ok && $qok->method_frame->message_count == 0
    ? step(sub {
        my ($done, $fail) = @_;
        $ch->delete_exchange(exchange => $exchange, on_success => $done, on_failure => $fail);
    })
    : (0, $ok ? 'queue not empty after ack' : $qok));
check('queue.delete if-empty (message acked) and exchange.delete', $ok, @r);

$closing_channel = 1;
($ok, @r) = step(sub {
    my ($done, $fail) = @_;
    $ch->close(on_success => $done, on_failure => $fail);
});
check('channel.close', $ok, @r);

($ok, @r) = step(sub {
    my ($done, $fail) = @_;
    $ar->close(on_success => $done, on_failure => $fail);
});
check('connection.close / close-ok', $ok && !@surprises,
    $ok ? "asynchronous events: @surprises" : @r);
