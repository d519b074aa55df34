// Package engine runs Silo's durable operations (creating, suspending,
// resuming, deleting, purging and moving tenants) and owns the River
// client that every service's background jobs run on.
//
// An operation is a Plan of idempotent steps, recorded in the catalog's
// operations table as they run, with undo steps and a pivot: the step
// after which undoing is wrong. A step that fails before the pivot has
// committed starts the undo; once it has committed, the operation only
// goes forward, retried until it succeeds. The pivot is recorded in the
// catalog in the pivot step's own transaction (MarkPivot), so no crash can
// separate the change from the record of it.
//
// The server that takes a request runs the operation at once, under a
// lease (a session advisory lock on the catalog). A server that dies
// loses its leases with its connections; every server's recovery sweep
// finds running operations with a free lease and queues a River job, and
// the first server with a free slot resumes them within seconds.
//
// Failpoints (SILO_FAILPOINTS) stop a server at any step boundary, for the
// crash tests.
package engine
