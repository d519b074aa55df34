package silo_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo"
)

func TestValidateShardName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"eu-west-1", true},
		{strings.Repeat("a", 32), true},
		{strings.Repeat("a", 33), false},
		{"", false},
		{"Eu", false},
		{"1eu", false},
		{"eu-", false},
		{"-eu", false},
		{"eu_1", false},
		{"eu 1", false},
		{"eu;drop", false},
		{`eu"`, false},
		{"../eu", false},
		{"ü", false},
	} {
		err := silo.ValidateShardName(tc.name)
		if tc.ok {
			require.NoError(t, err, tc.name)
		} else {
			require.Equal(t, silo.EINVALID, silo.ErrorCode(err), tc.name)
		}
	}
}

func TestValidateTenantID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		id   string
		rule string // "" when valid
	}{
		{"acme", ""},
		{"acme-corp-2", ""},
		{strings.Repeat("a", silo.MaxTenantIDLen), ""},
		{strings.Repeat("a", silo.MaxTenantIDLen+1), "longer than"},
		{"", "required"},
		{"Acme", "lowercase"},
		{"acme'", "lowercase"},
		{"acme;", "lowercase"},
		{"ac me", "lowercase"},
		{"../acme", "lowercase"},
		{"9acme", "start with a letter"},
		{"acme-", "hyphen"},
		{"postgres", "reserved"},
		{"silo", "reserved"},
	} {
		err := silo.ValidateTenantID(tc.id)
		if tc.rule == "" {
			require.NoError(t, err, tc.id)
			continue
		}
		require.Equal(t, silo.EINVALID, silo.ErrorCode(err), tc.id)
		require.Contains(t, silo.ErrorMessage(err), tc.rule, tc.id)
	}
}

func TestValidateRegionAndWeight(t *testing.T) {
	t.Parallel()
	require.NoError(t, silo.ValidateRegion("eu-west"))
	for _, r := range []string{"", "EU", "eu west", "1eu", strings.Repeat("a", 33)} {
		require.Equal(t, silo.EINVALID, silo.ErrorCode(silo.ValidateRegion(r)), r)
	}
	require.NoError(t, silo.ValidateWeight(1))
	require.NoError(t, silo.ValidateWeight(silo.MaxWeight))
	for _, w := range []int{0, -1, silo.MaxWeight + 1} {
		require.Equal(t, silo.EINVALID, silo.ErrorCode(silo.ValidateWeight(w)), w)
	}
}

func TestRedactDSN(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"postgres://silo:s3cret@db:5432/postgres", "postgres://silo:xxxxx@db:5432/postgres"},
		{"postgresql://silo:p%40ss@db/postgres?sslmode=require", "postgresql://silo:xxxxx@db/postgres?sslmode=require"},
		{"postgres://silo@db/postgres?password=s3cret", "postgres://silo@db/postgres?password=xxxxx"},
		{"postgres://silo@db/postgres", "postgres://silo@db/postgres"},
		{"host=db user=silo password=s3cret dbname=x", "host=db user=silo password=xxxxx dbname=x"},
		{"host=db password = 's3 cret' dbname=x", "host=db password = xxxxx dbname=x"},
		{"host=db PASSWORD=s3cret", "host=db PASSWORD=xxxxx"},
		{"postgres://silo@db/x?sslpassword=s3cret&sslmode=verify-full", "postgres://silo@db/x?sslmode=verify-full&sslpassword=xxxxx"},
		{"host=db sslkey=k sslpassword=s3cret", "host=db sslkey=k sslpassword=xxxxx"},
		{"postgres://a:s3cret@[::1", "(unparsable connection string)"},
	} {
		got := silo.RedactDSN(tc.in)
		require.Equal(t, tc.want, got, tc.in)
		require.NotContains(t, got, "s3cret")
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	cause := errors.New("connection refused by 10.0.0.1")
	err := fmt.Errorf("register: %w", silo.WrapError(cause, silo.EUNAVAILABLE, "shard %q is down", "a"))
	require.Equal(t, silo.EUNAVAILABLE, silo.ErrorCode(err))
	require.Equal(t, `shard "a" is down`, silo.ErrorMessage(err))
	require.ErrorIs(t, err, cause)

	plain := errors.New("pq: internal detail")
	require.Equal(t, silo.EINTERNAL, silo.ErrorCode(plain))
	require.Equal(t, "internal error", silo.ErrorMessage(plain), "causes never reach users")
	require.Equal(t, "", silo.ErrorCode(nil))
}
