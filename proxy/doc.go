// Package proxy is Silo's wire-protocol endpoint: any PostgreSQL client
// (psql, libpq, pgx, JDBC, psycopg2, node-postgres, pg_restore) connects to
// it as user = tenant id, database = tenant id, password = one of the
// tenant's API keys, and reaches the tenant's own database.
//
// Its path through the rest of Silo:
//
//	client ──TLS?──► startup: SCRAM-SHA-256 against the key verifiers in the
//	                 catalog (shardmap.GetTenantLogin)
//	       ◄──────── ParameterStatus of a real server session, synced to the
//	                 client's startup parameters
//	       ──query─► router.Acquire: the tenant's route (cached, held through
//	                 a move's cutover), the shard's budget and the tenant's
//	                 cap, the shard's breaker
//	                 ► session parameters synced, prepared statements made
//	                   on this server connection if it lacks them
//	       ◄──────── responses relayed until ReadyForQuery
//	                 router.Lease.Release at the end of each transaction
//
// Transaction pooling is the default: a client holds a server connection
// only while a transaction is open, so thousands of clients share a shard's
// budget with the library and the HTTP API. A client that needs a session
// of its own (LISTEN, session advisory locks, WITH HOLD cursors, SQL-level
// PREPARE) asks for one at connect time with
// options=-c silo.pool_mode=session; it then holds one connection of the
// budget until it disconnects, and the connection is closed, not pooled,
// after it.
//
// Under transaction pooling, what follows a client from one server
// connection to the next:
//   - run-time parameters set at startup, with SET, set_config or RESET
//     (client_encoding, DateStyle, TimeZone, search_path, and any other):
//     the endpoint reads back the session's settings after a statement
//     that may have changed them and sets them on the next connection;
//   - named prepared statements of the extended protocol: each client's
//     statements are known by name, and are prepared on a server
//     connection the first time they are used there (under a name derived
//     from their text and parameter types), as PgBouncer 1.21 does.
//
// What does not follow, as with PgBouncer: session advisory locks,
// LISTEN, temporary tables, SQL-level PREPARE, WITH HOLD cursors and the
// unnamed statement between transactions. Use the session mode for those.
package proxy
