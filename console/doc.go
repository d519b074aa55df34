// Package console is Silo's web console: a single-page app of plain HTML,
// CSS and JavaScript, embedded in the binary, that an operator opens at
// /console to see shards, tenants, migration runs, moves and the audit log,
// and to suspend, resume, drain and run migrations.
//
// The page holds no data and needs no token: it calls the JSON API from the
// browser with the admin token the operator pastes into its login form,
// kept in the tab's sessionStorage and sent as a bearer token, never in a
// cookie or a URL. Its assets build no HTML from strings: every value is
// set as text, so a tenant's key name or an error message cannot become
// markup. Handler serves them with a Content-Security-Policy of 'self' only
// and no framing.
package console
