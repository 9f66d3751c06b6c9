// One overlay as its rendered manifests configure it: @grpc/grpc-js dials the target the app is given,
// with exactly what docs/calling.md "Where the gateway listens" names for the listener kind: nothing but the
// credentials (insecure on loopback and on a Unix socket, the CA for TLS); no channel option.
//
// run.sh runs this file once per overlay, with OVERLAY_KIND (tcp, unix or tls),
// PRINTJOB_GATEWAY_TARGET (what the app dials) and TLS_CA (TLS only).
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { test, before, after } = require('node:test');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const REPO = path.resolve(__dirname, '..', '..', '..');

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the interop tests through tests/interop/run.sh`);
  return value;
}

const KIND = env('OVERLAY_KIND');
const TARGET = env('PRINTJOB_GATEWAY_TARGET');

// docs/calling.md "Where the gateway listens", Node grpc-js.
function credentials() {
  if (KIND === 'tls') return grpc.credentials.createSsl(fs.readFileSync(env('TLS_CA')));
  return grpc.credentials.createInsecure();
}

const { graph } = grpc.loadPackageDefinition(
  protoLoader.loadSync('graph/print/v1/print_job_service.proto', {
    includeDirs: [path.join(REPO, 'proto')],
    keepCase: true,
  }),
);

let client;
before(() => {
  assert.ok(['tcp', 'unix', 'tls'].includes(KIND), KIND);
  client = new graph.print.v1.PrintJobService(TARGET, credentials());
});
after(() => client.close());

function cancel(printerId, printJobId) {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', 'Bearer interop-token');
  return new Promise((resolve) => {
    client.Cancel(
      { printer_id: printerId, print_job_id: printJobId },
      metadata,
      { deadline: Date.now() + 10000 },
      (error, response) => resolve({ error, response }),
    );
  });
}

test(`health: SERVING over ${KIND}`, async () => {
  // grpc.health.v1.Health/Check with raw bytes: an empty request; SERVING is field 1 = 1.
  const answer = await new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      '/grpc.health.v1.Health/Check',
      (bytes) => bytes,
      (bytes) => bytes,
      Buffer.alloc(0),
      { deadline: Date.now() + 10000 },
      (error, response) => (error ? reject(error) : resolve(response)),
    );
  });
  assert.deepEqual([...answer], [0x08, 0x01]);
});

test(`Cancel: OK, then NOT_FOUND with details, over ${KIND}`, async () => {
  const ok = await cancel('any-job-printer', `overlay-node-${KIND}`);
  assert.equal(ok.error, null);
  assert.deepEqual(ok.response, {});
  const missing = await cancel('printer-1', 'no-such-job');
  assert.equal(missing.error.code, grpc.status.NOT_FOUND);
  assert.equal(missing.error.metadata.get('grpc-status-details-bin').length, 1);
});
