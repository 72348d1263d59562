#!/usr/bin/env node
// amqplib (callback API) conformance scenarios. Prints TAP on stdout.
//
// Usage: node amqplib.test.js HOST PORT   (guest/guest, vhost /)
// Environment: AMQPLIB_CASE_TIMEOUT_MS (per case, default 10000), AMQPLIB_ONLY.
//
// A tiny sequential harness rather than node:test, so that it behaves the same on
// Debian's node 18 and on newer nodes, and so that a case that hangs (a callback the
// broker never triggers) fails after CASE_TIMEOUT_MS and does not keep the process
// alive: every case registers the sockets it opens, and they are destroyed after it.
'use strict';

const amqp = require('amqplib/callback_api');
const crypto = require('node:crypto');

const HOST = process.argv[2] || process.env.AMQP_HOST || '127.0.0.1';
const PORT = Number(process.argv[3] || process.env.AMQP_PORT || 5672);
const URL = `amqp://guest:guest@${HOST}:${PORT}/`;
const CASE_TIMEOUT_MS = Number(process.env.AMQPLIB_CASE_TIMEOUT_MS || 10000);

// AMQPLIB_ONLY=substring runs only the cases whose name contains it.
const ONLY = process.env.AMQPLIB_ONLY || '';
const cases = [];
function test(name, fn) {
  if (name.includes(ONLY)) cases.push({ name, fn });
}

const uid = () => crypto.randomBytes(6).toString('hex');

// Opens a connection and remembers it so the harness can tear it down.
function connect(ctx, cb) {
  amqp.connect(URL, (err, conn) => {
    if (err) return cb(err);
    ctx.conns.push(conn);
    cb(null, conn);
  });
}

function destroy(conn) {
  try {
    const stream = conn.connection && conn.connection.stream;
    if (stream && !stream.destroyed) stream.destroy();
  } catch (_) { /* ignore */ }
}

// --- cases ---------------------------------------------------------------------

test('round trip: declare, bind, publish, consume, ack, cancel, close', (ctx, done) => {
  const ex = `amqplib.rt.ex.${uid()}`;
  const q = `amqplib.rt.q.${uid()}`;
  const body = `hello ${uid()}`;
  connect(ctx, (err, conn) => {
    if (err) return done(err);
    conn.on('error', (e) => done(new Error(`connection error: ${e.message}`)));
    conn.createChannel((err, ch) => {
      if (err) return done(err);
      ch.on('error', (e) => done(new Error(`channel error: ${e.message}`)));
      ch.assertExchange(ex, 'direct', { durable: false, autoDelete: false }, (err) => {
        if (err) return done(err);
        ch.assertQueue(q, { durable: false, exclusive: false, autoDelete: false }, (err, ok) => {
          if (err) return done(err);
          if (ok.queue !== q) return done(new Error(`declare-ok names ${ok.queue}, want ${q}`));
          ch.bindQueue(q, ex, 'rk', {}, (err) => {
            if (err) return done(err);
            let tag = null;
            ch.consume(q, (msg) => {
              if (msg === null) return done(new Error('consumer cancelled by broker'));
              const got = msg.content.toString();
              if (got !== body) return done(new Error(`body ${JSON.stringify(got)}, want ${JSON.stringify(body)}`));
              if (msg.fields.routingKey !== 'rk' || msg.fields.exchange !== ex) {
                return done(new Error(`delivered with ${JSON.stringify(msg.fields)}`));
              }
              if (msg.properties.contentType !== 'text/plain' || msg.properties.headers.h !== 'v') {
                return done(new Error(`properties ${JSON.stringify(msg.properties)}`));
              }
              ch.ack(msg);
              ch.cancel(tag, (err) => {
                if (err) return done(err);
                ch.checkQueue(q, (err, info) => {
                  if (err) return done(err);
                  if (info.messageCount !== 0 || info.consumerCount !== 0) {
                    return done(new Error(`after ack+cancel: ${JSON.stringify(info)}`));
                  }
                  ch.deleteQueue(q, {}, (err) => {
                    if (err) return done(err);
                    ch.deleteExchange(ex, {}, (err) => {
                      if (err) return done(err);
                      ch.close((err) => {
                        if (err) return done(err);
                        conn.close((err) => done(err || null));
                      });
                    });
                  });
                });
              });
            }, { noAck: false }, (err, ok) => {
              if (err) return done(err);
              tag = ok.consumerTag;
              const accepted = ch.publish(ex, 'rk', Buffer.from(body),
                { contentType: 'text/plain', headers: { h: 'v' } });
              if (!accepted) return done(new Error('publish of a single message returned false'));
            });
          });
        });
      });
    });
  });
});

test('sendToQueue until it returns false, then connection.close(cb) calls back', (ctx, done) => {
  // Issue: against RabbitMQ the close callback fires; against Warren it never did.
  const q = `amqplib.burst.${uid()}`;
  const payload = Buffer.alloc(1024, 'x');
  connect(ctx, (err, conn) => {
    if (err) return done(err);
    conn.on('error', (e) => ctx.log(`connection error event: ${e.message}`));
    conn.createChannel((err, ch) => {
      if (err) return done(err);
      ch.on('error', (e) => ctx.log(`channel error event: ${e.message}`));
      ch.assertQueue(q, { durable: false, autoDelete: false, exclusive: true }, (err) => {
        if (err) return done(err);
        let sent = 0;
        while (ch.sendToQueue(q, payload) && sent < 1000000) sent++;
        sent++; // the call that returned false still queued its message
        ctx.log(`sendToQueue returned false after ${sent} messages`);
        if (sent >= 1000000) return done(new Error('sendToQueue never returned false'));
        const started = Date.now();
        conn.close((err) => {
          ctx.log(`close callback after ${Date.now() - started} ms (err=${err ? err.message : null})`);
          done(err || null);
        });
      });
    });
  });
});

test('connection.close(cb) calls back on an idle connection', (ctx, done) => {
  connect(ctx, (err, conn) => {
    if (err) return done(err);
    conn.createChannel((err) => {
      if (err) return done(err);
      conn.close((err) => done(err || null));
    });
  });
});

// --- harness -------------------------------------------------------------------

function runCase(c, index) {
  return new Promise((resolve) => {
    const ctx = { conns: [], notes: [], log: (m) => ctx.notes.push(m) };
    let finished = false;
    const finish = (err) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      ctx.conns.forEach(destroy);
      if (err) {
        console.log(`not ok ${index} - ${c.name}`);
        console.log(`# ${String(err && err.stack || err).split('\n').join('\n# ')}`);
      } else {
        console.log(`ok ${index} - ${c.name}`);
      }
      ctx.notes.forEach((n) => console.log(`# ${n}`));
      // Let destroyed sockets settle before the next case.
      setImmediate(resolve);
    };
    const timer = setTimeout(
      () => finish(new Error(`timed out after ${CASE_TIMEOUT_MS} ms`)), CASE_TIMEOUT_MS);
    try {
      c.fn(ctx, finish);
    } catch (e) {
      finish(e);
    }
  });
}

process.on('uncaughtException', (e) => {
  console.log(`# uncaught exception: ${e && e.stack || e}`);
  console.log('Bail out! uncaught exception');
  process.exit(1);
});

(async () => {
  console.log('TAP version 13');
  console.log(`# amqplib ${JSON.parse(require('node:fs').readFileSync(require('node:path').join(__dirname, 'node_modules', 'amqplib', 'package.json'), 'utf8')).version} against ${HOST}:${PORT}`);
  console.log(`1..${cases.length}`);
  for (let i = 0; i < cases.length; i++) await runCase(cases[i], i + 1);
  process.exit(0);
})();
