package api

import (
	_ "embed"
	"fmt"
	"regexp"

	"github.com/getkin/kin-openapi/openapi3"
)

// Spec is the OpenAPI document, served at /v1/openapi.yaml.
//
//go:embed openapi.yaml
var Spec []byte

// LoadSpec parses and validates Spec.
func LoadSpec() (*openapi3.T, error) {
	doc, err := openapi3.NewLoader().LoadFromData(Spec)
	if err != nil {
		return nil, fmt.Errorf("load openapi.yaml: %w", err)
	}
	return doc, nil
}

var pathParamRE = regexp.MustCompile(`\{([^}]+)\}`)

// publicRoutes returns the echo route patterns ("GET /v1/shards/:name") of
// the operations the spec marks `security: []`.
func publicRoutes(doc *openapi3.T) map[string]bool {
	return routesWhere(doc, func(op *openapi3.Operation) bool {
		return op.Security != nil && len(*op.Security) == 0
	})
}

// keyRoutes returns the route patterns of the operations a tenant key may
// call: those whose security accepts the tenantKey scheme (the data API).
func keyRoutes(doc *openapi3.T) map[string]bool {
	return routesWhere(doc, func(op *openapi3.Operation) bool {
		if op.Security == nil {
			return false
		}
		for _, req := range *op.Security {
			if _, ok := req["tenantKey"]; ok {
				return true
			}
		}
		return false
	})
}

func routesWhere(doc *openapi3.T, match func(*openapi3.Operation) bool) map[string]bool {
	routes := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if match(op) {
				routes[method+" "+pathParamRE.ReplaceAllString(path, ":$1")] = true
			}
		}
	}
	return routes
}
