// Package api is Silo's HTTP API, served with echo.
//
// openapi.yaml is the contract: the routes, parameters, models and the client
// in api.gen.go are generated from it with oapi-codegen (`make generate`), the
// routes that need no token are read from its `security: []` operations, and
// the tests validate every request and response against it with kin-openapi.
// Errors are application/problem+json (RFC 9457) with a stable `code`.
package api

//go:generate go tool oapi-codegen -config oapi-codegen.yaml openapi.yaml
