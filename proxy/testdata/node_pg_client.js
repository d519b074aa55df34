// node-postgres against Silo's endpoint, for TestNodePg (nodepg_test.go).
//
//   node node_pg_client.js ROOT session DSN   runs the scenario, prints what
//                                             it saw
//   node node_pg_client.js ROOT connect DSN   prints how a connection attempt
//                                             ended
//   node node_pg_client.js ROOT idle DSN      connects, prints "connected",
//                                             waits for a line on stdin, then
//                                             runs SELECT 1 and prints how it
//                                             ended
//
// ROOT is the directory whose node_modules holds pg and pg-copy-streams
// (installed by the test, see nodePg in nodepg_test.go).
// Each prints one JSON object last; the Go test asserts on it. A step that
// throws ends the script with a stack trace (and a failed test).
'use strict'

const { Readable, Writable } = require('stream')
const { pipeline } = require('stream/promises')
const readline = require('readline')
const root = process.argv[2]
const load = name => require(require.resolve(name, { paths: [root] }))
const pg = load('pg')
const { from: copyFrom, to: copyTo } = load('pg-copy-streams')

function client (dsn) {
  const c = new pg.Client({ connectionString: dsn })
  c.on('error', () => {}) // a connection that ends is reported by its query
  return c
}

async function codeOf (promise) {
  try {
    await promise
    return null
  } catch (e) {
    return e.code || String(e)
  }
}

async function session (dsn) {
  const seen = {}
  const c = client(dsn)
  await c.connect()

  let r = await c.query('SELECT $1::int + $2 AS sum, $3::text AS s', [40, 2, "it's"])
  seen.select = [r.rows[0].sum, r.rows[0].s]

  await c.query('CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)')
  let inserted = 0
  for (const [id, name] of [[1, 'one'], [2, 'two'], [3, 'three']]) {
    r = await c.query({ name: 'insert-item', text: 'INSERT INTO items VALUES ($1, $2)', values: [id, name] })
    inserted += r.rowCount
  }
  seen.inserted = inserted

  await c.query('BEGIN')
  await c.query({ name: 'insert-item', text: 'INSERT INTO items VALUES ($1, $2)', values: [4, 'four'] })
  await c.query('COMMIT')
  await c.query('BEGIN')
  await c.query({ name: 'insert-item', text: 'INSERT INTO items VALUES ($1, $2)', values: [5, 'five'] })
  await c.query('ROLLBACK')
  seen.after_rollback = Number((await c.query('SELECT count(*) AS n FROM items')).rows[0].n)

  // COPY both ways, larger than the endpoint's 64 KiB buffers.
  let rows = ''
  for (let i = 100; i < 10100; i++) rows += `${i}\tname-${String(i).padStart(5, '0')}\n`
  const sink = c.query(copyFrom('COPY items FROM STDIN'))
  await pipeline(Readable.from([rows]), sink)
  seen.copy_in_rowcount = sink.rowCount
  const chunks = []
  await pipeline(c.query(copyTo('COPY (SELECT id, name FROM items WHERE id >= 100 ORDER BY id) TO STDOUT')),
    new Writable({ write (chunk, _, done) { chunks.push(chunk); done() } }))
  const out = Buffer.concat(chunks).toString()
  seen.copy_out_matches = out === rows
  seen.copy_out_bytes = out.length

  seen.duplicate_code = await codeOf(c.query('INSERT INTO items VALUES (1, $1)', ['again']))

  // A cancel request (node-postgres opens a connection to send it) ends
  // the statement, not the session.
  const start = Date.now()
  const sleeping = c.query('SELECT pg_sleep(20)')
  await new Promise(resolve => setTimeout(resolve, 500))
  new pg.Client({ connectionString: dsn }).cancel(c, c.activeQuery)
  seen.cancel_code = await codeOf(sleeping)
  seen.cancel_seconds = (Date.now() - start) / 1000
  seen.after_cancel = (await c.query('SELECT 1 AS one')).rows[0].one

  // A named statement follows the client to another server connection: a
  // second client holds the one just used.
  const whoami = n => ({ name: 'whoami', text: 'SELECT pg_backend_pid() AS pid, $1::int AS n', values: [n] })
  seen.pid_before = (await c.query(whoami(1))).rows[0].pid
  const holder = client(dsn)
  await holder.connect()
  await holder.query('BEGIN')
  seen.pid_holder = (await holder.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
  r = await c.query(whoami(2))
  seen.pid_after = r.rows[0].pid
  seen.whoami_n = r.rows[0].n
  await holder.query('COMMIT')
  await holder.end()

  // Many clients, one statement name each with its own text, many queries
  // at once: the name means each client's own statement on whichever
  // server connection serves it.
  const clients = []
  for (let k = 1; k <= 6; k++) {
    const ck = client(dsn)
    await ck.connect()
    clients.push(ck)
  }
  const pids = new Set()
  let wrong = 0
  let queries = 0
  await Promise.all(clients.map(async (ck, i) => {
    const k = i + 1
    for (let n = 0; n < 40; n++) {
      const q = { name: 'calc', text: `SELECT $1::int * ${k} AS v, pg_backend_pid() AS pid`, values: [n] }
      if (n % 10 === 0) await ck.query('BEGIN')
      const row = (await ck.query(q)).rows[0]
      if (n % 10 === 0) await ck.query('COMMIT')
      if (row.v !== n * k) wrong++
      pids.add(row.pid)
      queries++
    }
  }))
  await Promise.all(clients.map(ck => ck.end()))
  seen.named_queries = queries
  seen.named_wrong = wrong
  seen.named_server_connections = pids.size

  await c.end()
  return seen
}

async function connect (dsn) {
  const c = client(dsn)
  try {
    await c.connect()
  } catch (e) {
    return { connected: false, code: e.code || '', message: e.message }
  }
  await c.end()
  return { connected: true }
}

async function idle (dsn) {
  const c = client(dsn)
  await c.connect()
  process.stdout.write('connected\n')
  const rl = readline.createInterface({ input: process.stdin })
  await new Promise(resolve => rl.once('line', resolve))
  rl.close()
  try {
    await c.query('SELECT 1')
  } catch (e) {
    return { connected: false, code: e.code || '', message: e.message }
  }
  await c.end()
  return { connected: true }
}

const [mode, dsn] = process.argv.slice(3)
const run = { session, connect, idle }[mode]
run(dsn).then(result => {
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exit(0)
}, err => {
  console.error(err)
  process.exit(1)
})
