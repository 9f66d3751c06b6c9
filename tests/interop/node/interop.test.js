// @grpc/grpc-js (Node) against the real gateway in front of the simulated Graph, with node:test.
//
// run.sh passes GATEWAY (host:port of the gRPC API) and SIMULATOR_URL (the simulated Graph's base
// URL, ending in /v1.0). The service is loaded from proto/ with @grpc/proto-loader; error details
// (grpc-status-details-bin) are decoded with protobufjs from third_party/'s error_details.proto and
// a small inline google.rpc.Status.
'use strict';

const assert = require('node:assert/strict');
const path = require('node:path');
const { randomUUID } = require('node:crypto');
const { test, before, after } = require('node:test');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const REPO = path.resolve(__dirname, '..', '..', '..');
const TOKEN = 'interop-token';
// The app in tenantToken's tokens (any GUID: the simulated Graph takes any token).
const APP = '0a11ce00-0000-4000-8000-000000001e57';

// A JWT-shaped bearer token, unsigned, naming `tenant` (a new GUID by default) and APP. The
// gateway's throttle gate keeps one window per tenant and app, read unverified from the token;
// every token that is not a JWT (TOKEN among them) shares one. A test that makes Graph throttle
// sends a tenant of its own, so that the window its 429 opens holds no other test's call.
function tenantToken(tenant = randomUUID()) {
  const part = (claims) => Buffer.from(JSON.stringify(claims)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part({ tid: tenant, appid: APP })}.interop`;
}

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the interop tests through tests/interop/run.sh`);
  return value;
}

const GATEWAY = env('GATEWAY');
const SIMULATOR = env('SIMULATOR_URL').replace(/\/v1\.0\/?$/, '');

const definition = protoLoader.loadSync('graph/print/v1/print_job_service.proto', {
  includeDirs: [path.join(REPO, 'proto')],
  keepCase: true,
});
const { graph } = grpc.loadPackageDefinition(definition);

const rpc = new protobuf.Root();
rpc.loadSync(
  [path.join(REPO, 'third_party/googleapis/google/rpc/error_details.proto'), 'google/protobuf/any.proto'],
  { keepCase: true },
);
protobuf.parse(
  `syntax = "proto3";
   package google.rpc;
   import "google/protobuf/any.proto";
   message Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }`,
  rpc,
  { keepCase: true },
);
rpc.resolveAll();
const Status = rpc.lookupType('google.rpc.Status');

let client;
before(() => {
  client = new graph.print.v1.PrintJobService(GATEWAY, grpc.credentials.createInsecure());
});
after(() => client.close());

// Calls Cancel and resolves with everything a caller can see: error, initial and trailing
// metadata, and how long the call took.
function cancel(printerId, printJobId, { token = TOKEN, timeoutMs = 10000, metadata = {}, shareId = '' } = {}) {
  const md = new grpc.Metadata();
  if (token !== null) md.set('authorization', `Bearer ${token}`);
  for (const [key, value] of Object.entries(metadata)) md.set(key, value);
  const started = performance.now();
  return new Promise((resolve) => {
    const outcome = { initial: new grpc.Metadata() };
    let pending = 2;
    const done = () => {
      pending -= 1;
      if (pending === 0) resolve({ ...outcome, elapsedMs: performance.now() - started });
    };
    const call = client.Cancel(
      { printer_id: printerId, print_job_id: printJobId, share_id: shareId },
      md,
      { deadline: Date.now() + timeoutMs },
      (error, response) => {
        outcome.error = error;
        outcome.response = response;
        done();
      },
    );
    call.on('metadata', (initial) => {
      outcome.initial = initial;
    });
    call.on('status', (status) => {
      outcome.status = status;
      outcome.trailing = status.metadata;
      done();
    });
  });
}

function the(outcome, key) {
  const values = [...outcome.initial.get(key), ...outcome.trailing.get(key)];
  assert.equal(values.length, 1, `metadata ${key}: expected one value, got ${JSON.stringify(values)}`);
  return values[0];
}

// Decodes grpc-status-details-bin into { ErrorInfo: {...}, RequestInfo: {...}, ... }.
function details(outcome) {
  const raw = outcome.trailing.get('grpc-status-details-bin');
  assert.equal(raw.length, 1, 'the error carries one grpc-status-details-bin');
  const status = Status.decode(raw[0]);
  assert.equal(status.code, outcome.error.code);
  assert.equal(status.message, outcome.error.details);
  const found = {};
  for (const any of status.details) {
    const type = rpc.lookupType(any.type_url.replace(/^type\.googleapis\.com\//, ''));
    found[type.name] = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
  }
  return found;
}

async function graphRequests(clientRequestId) {
  const answer = await fetch(`${SIMULATOR}/__requests`);
  assert.equal(answer.status, 200);
  return (await answer.json()).filter((r) => r.clientRequestId === clientRequestId);
}

test('Cancel OK carries request-id and client-request-id', async () => {
  const requestId = randomUUID();
  const outcome = await cancel('any-job-printer', 'node-ok-1', { metadata: { 'x-request-id': requestId } });
  assert.equal(outcome.error, null);
  assert.deepEqual(outcome.response, {});
  assert.equal(outcome.status.code, grpc.status.OK);
  assert.equal(the(outcome, 'client-request-id'), requestId);
  const seen = await graphRequests(requestId);
  assert.equal(seen.length, 1);
  assert.equal(seen[0].path, '/v1.0/print/printers/any-job-printer/jobs/node-ok-1/cancel');
  assert.equal(seen[0].status, 204);
  assert.equal(the(outcome, 'request-id'), seen[0].requestId);
});

test('a paused job is canceled once, then answered as already canceled', async () => {
  const first = await cancel('printer-1', '6');
  assert.equal(first.error, null);
  assert.equal(first.response.already_canceled, undefined, 'false is the default: not sent');
  // Graph refuses the repeat (409); the gateway reads the job, finds it canceled and answers OK.
  const requestId = randomUUID();
  const second = await cancel('printer-1', '6', { metadata: { 'x-request-id': requestId } });
  assert.equal(second.error, null);
  assert.deepEqual(second.response, { already_canceled: true });
  const seen = await graphRequests(requestId);
  assert.deepEqual(
    seen.map((r) => [r.method, r.path, r.status]),
    [
      ['POST', '/v1.0/print/printers/printer-1/jobs/6/cancel', 409],
      ['GET', '/v1.0/print/printers/printer-1/jobs/6?$select=status', 200],
    ],
  );
});

test('through a printer share: the cancel and the read go to the share', async () => {
  const first = await cancel('', 'node-share-1', { shareId: 'any-job-share' });
  assert.equal(first.error, null);
  // share-1 shares printer-1, whose job 4 is canceled.
  const requestId = randomUUID();
  const second = await cancel('', '4', { shareId: 'share-1', metadata: { 'x-request-id': requestId } });
  assert.equal(second.error, null);
  assert.deepEqual(second.response, { already_canceled: true });
  const seen = await graphRequests(requestId);
  assert.deepEqual(
    seen.map((r) => [r.method, r.path, r.shareId]),
    [
      ['POST', '/v1.0/print/shares/share-1/jobs/4/cancel', 'share-1'],
      ['GET', '/v1.0/print/shares/share-1/jobs/4?$select=status', 'share-1'],
    ],
  );
  const both = await cancel('printer-1', '4', { shareId: 'share-1' });
  assert.equal(both.error.code, grpc.status.INVALID_ARGUMENT);
  assert.deepEqual(details(both).BadRequest.field_violations.map((v) => v.field), ['printer_id', 'share_id']);
});

test('a completed job: FAILED_PRECONDITION with jobState', async () => {
  const outcome = await cancel('printer-1', '3');
  assert.equal(outcome.error.code, grpc.status.FAILED_PRECONDITION);
  const found = details(outcome);
  assert.equal(found.ErrorInfo.metadata.graphErrorCode, 'notAllowed');
  assert.equal(found.ErrorInfo.metadata.jobState, 'completed');
});

test('no token: UNAUTHENTICATED, Graph not called', async () => {
  const requestId = randomUUID();
  const outcome = await cancel('any-job-printer', 'node-unauth', {
    token: null,
    metadata: { 'x-request-id': requestId },
  });
  assert.equal(outcome.error.code, grpc.status.UNAUTHENTICATED);
  const found = details(outcome);
  assert.equal(found.ErrorInfo.domain, 'printjob-gateway');
  assert.equal(found.ErrorInfo.reason, 'MISSING_CREDENTIALS');
  assert.equal(found.RequestInfo.request_id, requestId);
  assert.equal(the(outcome, 'client-request-id'), requestId);
  assert.deepEqual([...outcome.initial.get('request-id'), ...outcome.trailing.get('request-id')], []);
  assert.deepEqual(await graphRequests(requestId), []);
});

test('unknown job: NOT_FOUND with Graph ErrorInfo and request-id', async () => {
  const requestId = randomUUID();
  const outcome = await cancel('printer-1', 'no-such-job', { metadata: { 'x-request-id': requestId } });
  assert.equal(outcome.error.code, grpc.status.NOT_FOUND);
  const found = details(outcome);
  assert.equal(found.ErrorInfo.domain, 'graph.microsoft.com');
  assert.equal(found.ErrorInfo.reason, 'ITEM_NOT_FOUND');
  assert.equal(found.ErrorInfo.metadata.graphErrorCode, 'itemNotFound');
  assert.equal(found.ErrorInfo.metadata.httpStatus, '404');
  const seen = await graphRequests(requestId);
  assert.equal(seen.length, 1);
  assert.equal(the(outcome, 'request-id'), seen[0].requestId);
  assert.equal(the(outcome, 'client-request-id'), requestId);
  assert.equal(found.RequestInfo.request_id, seen[0].requestId);
  assert.equal(found.RequestInfo.serving_data, `client-request-id=${requestId}`);
});

test('invalid ID: INVALID_ARGUMENT with BadRequest', async () => {
  const outcome = await cancel('printer-1', '');
  assert.equal(outcome.error.code, grpc.status.INVALID_ARGUMENT);
  const found = details(outcome);
  assert.equal(found.ErrorInfo.reason, 'INVALID_FIELD');
  assert.deepEqual(found.BadRequest.field_violations.map((v) => v.field), ['print_job_id']);
});

test('throttled: RESOURCE_EXHAUSTED with RetryInfo; other tenants are not held', async () => {
  // Graph answers 429 with Retry-After 2; with a 1 s deadline no retry fits, so the answer is at once.
  // The token names a tenant of its own: the gateway then holds that tenant's calls for 2 s, and
  // no other tenant's.
  const outcome = await cancel('throttled-printer', 'node-1', { token: tenantToken(), timeoutMs: 1000 });
  assert.equal(outcome.error.code, grpc.status.RESOURCE_EXHAUSTED, outcome.error.details);
  const found = details(outcome);
  assert.equal(found.ErrorInfo.metadata.httpStatus, '429');
  assert.deepEqual(found.RetryInfo.retry_delay, { seconds: 2, nanos: 0 });
  assert.ok(outcome.elapsedMs < 1000, `answered after ${outcome.elapsedMs} ms`);
  assert.ok(the(outcome, 'request-id'));

  // Another tenant's call, at once, is not held by that window: had it been, its deadline (1.5 s,
  // inside the 2 s window) would have had it turned away at once with RESOURCE_EXHAUSTED.
  const other = await cancel('any-job-printer', 'node-other-tenant', { token: tenantToken(), timeoutMs: 1500 });
  assert.equal(other.error, null, other.error && other.error.details);
});

test('a client deadline is honoured', async () => {
  // slow-printer answers after 3 s.
  const outcome = await cancel('slow-printer', 'node-1', { timeoutMs: 1000 });
  assert.equal(outcome.error.code, grpc.status.DEADLINE_EXCEEDED);
  assert.ok(outcome.elapsedMs < 2000, `answered after ${outcome.elapsedMs} ms`);
  // When the gateway's answer beats the client's own timer (it nearly always does), it has details.
  if (outcome.trailing.get('grpc-status-details-bin').length > 0) {
    assert.equal(details(outcome).ErrorInfo.reason, 'GRAPH_DEADLINE_EXCEEDED');
  }
});
