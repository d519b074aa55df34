package provisioner

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// What pg_restore says of a failed import reaches the client and the audit
// log without the archive's SQL or a tenant's rows, and within a bound.
func TestImportMessageQuotesNoData(t *testing.T) {
	stderr := &capped{max: maxToolMessage}
	_, _ = stderr.Write([]byte(`pg_restore: error: could not execute query: ERROR:  duplicate key value violates unique constraint "notes_pkey"
DETAIL:  Key (id)=(42) already exists.
CONTEXT:  COPY notes, line 1: "42	secret title of a tenant"
Command was: COPY public.notes (id, title) FROM stdin;
`))
	_, _ = stderr.Write([]byte(strings.Repeat("x", 2*maxToolMessage)))
	require.LessOrEqual(t, stderr.Len(), maxToolMessage)
	msg := toolMessage(stderr.String())
	require.Contains(t, msg, `duplicate key value violates unique constraint "notes_pkey"`)
	for _, leak := range []string{"secret title", "(42)", "COPY public.notes"} {
		require.NotContains(t, msg, leak)
	}
}
