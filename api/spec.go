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
	public := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.Security != nil && len(*op.Security) == 0 {
				public[method+" "+pathParamRE.ReplaceAllString(path, ":$1")] = true
			}
		}
	}
	return public
}
