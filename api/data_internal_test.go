package api

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestEndsTransaction(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		sql  string
		ends bool
	}{
		{"COMMIT", true},
		{"commit and chain", true},
		{"  END;", true},
		{"ABORT", true},
		{"rollback", true},
		{"ROLLBACK WORK", true},
		{"ROLLBACK AND NO CHAIN", true},
		{"ROLLBACK PREPARED 'x'", true},
		{"PREPARE TRANSACTION 'x'", true},
		{"-- a comment\ncommit", true},
		{"/* outer /* inner */ still a comment */ COMMIT", true},
		{"ROLLBACK TO a", false},
		{"ROLLBACK TO SAVEPOINT a", false},
		{"rollback work to savepoint a", false},
		{"ROLLBACK TRANSACTION TO a", false},
		{"PREPARE q AS SELECT 1", false},
		{"SAVEPOINT a", false},
		{"BEGIN", false}, // a warning inside a transaction, nothing more
		{"SELECT 'commit'", false},
		{"committed", false},
		{"(SELECT 1)", false},
		{"", false},
		{"-- only a comment", false},
		{"/* unterminated", false},
	} {
		require.Equal(t, tc.ends, endsTransaction(tc.sql), "%q", tc.sql)
	}
}

func TestParamOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw  string
		want []byte
	}{
		{`null`, nil},
		{`"text"`, []byte("text")},
		{`""`, []byte{}},
		{`"\u00e9\n"`, []byte("é\n")},
		{`true`, []byte("true")},
		{`false`, []byte("false")},
		{`12345678901234567890.50`, []byte("12345678901234567890.50")},
		{`-1e3`, []byte("-1e3")},
		{` {"a": [1, 2]} `, []byte(`{"a":[1,2]}`)},
		{`[1, "x"]`, []byte(`[1,"x"]`)},
	} {
		got, err := paramOf(json.RawMessage(tc.raw))
		require.NoError(t, err, tc.raw)
		require.Equal(t, tc.want, got, tc.raw)
		require.Equal(t, tc.want == nil, got == nil, "%s: only null is NULL", tc.raw)
	}
}

func TestFloat(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		f    float64
		want any
	}{
		{math.NaN(), "NaN"},
		{math.Inf(1), "Infinity"},
		{math.Inf(-1), "-Infinity"},
		{1.5, 1.5},
	} {
		require.Equal(t, tc.want, float(tc.f, tc.f))
	}
	require.Equal(t, float32(0.25), float(0.25, float32(0.25)), "a float4 keeps its type, for its shortest text")
}

// appendJSON writes what encoding/json writes, byte for byte.
func TestQueryResultJSON(t *testing.T) {
	t.Parallel()
	row := func(v ...any) json.RawMessage {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		return b
	}
	for _, r := range []queryResult{
		{Columns: []string{}, Rows: []json.RawMessage{}},
		{Columns: []string{"id", "title"}, Rows: []json.RawMessage{row(1, "a"), row(2, nil)}, RowsAffected: 2},
		{Columns: []string{`quo"te`, `back\slash`, "tab\there", "<html>&", "naïve", "日本", "\x00\x1f", "\xff"},
			Rows: []json.RawMessage{row("x", 1.5, true, map[string]any{"k": []any{1, "<"}})}, RowsAffected: -1, Truncated: true},
	} {
		want, err := json.Marshal(r)
		require.NoError(t, err)
		require.Equal(t, string(want), string(r.appendJSON(nil)))
	}
	tx := transactionResult{Results: []queryResult{
		{Columns: []string{"a"}, Rows: []json.RawMessage{row(1)}, RowsAffected: 1},
		{Columns: []string{}, Rows: []json.RawMessage{}, RowsAffected: 3},
	}}
	want, err := json.Marshal(tx)
	require.NoError(t, err)
	require.Equal(t, string(want), string(tx.appendJSON(nil)))
}
