package proxy

import "strings"

// What a statement's text may do to its session, found without parsing
// SQL: the first word of each statement (after whitespace and comments),
// and a few function names anywhere. A false alarm costs one round trip
// (a refresh) or one reconnect (a discard); a miss is the same as
// PgBouncer's transaction pooling, which tracks nothing of this.
type effects struct {
	// settings: the statement may change run-time parameters (SET, RESET,
	// set_config): they are read back once the transaction ends.
	settings bool
	// session: the statement leaves session state that must not reach the
	// next borrower and cannot follow the client (DISCARD, DEALLOCATE,
	// LISTEN, PREPARE, temporary tables, session advisory locks): the
	// server connection is closed, not pooled, at the transaction's end. A
	// PREPARE left on it failed the next client's PREPARE of that name.
	session bool
	// commits: the statement may commit work of its own before it ends
	// (a procedure or DO block with COMMIT, VACUUM, CONCURRENTLY): a
	// batch of it is never sent again, even on a session that ended
	// before it answered anything.
	commits bool
}

func (e effects) or(o effects) effects {
	return effects{settings: e.settings || o.settings, session: e.session || o.session, commits: e.commits || o.commits}
}

func sqlEffects(sql string) effects {
	var e effects
	start := 0
	for i := 0; i <= len(sql); i++ {
		if i < len(sql) && sql[i] != ';' {
			continue
		}
		switch w := firstWord(sql[start:i]); w {
		case "set", "reset":
			e.settings = true
		case "discard", "deallocate", "listen", "prepare":
			e.session = true
		case "create":
			if containsFold(sql[start:i], "temp") {
				e.session = true
			}
		case "call", "do", "vacuum", "cluster", "reindex":
			e.commits = true
		}
		start = i + 1
	}
	if containsFold(sql, "set_config") {
		e.settings = true
	}
	if containsFold(sql, "pg_advisory_lock") || containsFold(sql, "pg_try_advisory_lock") {
		e.session = true
	}
	if containsFold(sql, "concurrently") {
		e.commits = true
	}
	return e
}

// firstWord returns the first word of s, lowercased, after whitespace and
// SQL comments.
func firstWord(s string) string {
	i := 0
	for i < len(s) {
		switch {
		case s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == '\f' || s[i] == '(':
			i++
		case i+1 < len(s) && s[i] == '-' && s[i+1] == '-':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case i+1 < len(s) && s[i] == '/' && s[i+1] == '*':
			depth := 0
			for i+1 < len(s) {
				if s[i] == '/' && s[i+1] == '*' {
					depth++
					i += 2
				} else if s[i] == '*' && s[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
			if depth != 0 {
				return ""
			}
		default:
			j := i
			for j < len(s) && (s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z' || s[j] == '_') {
				j++
			}
			w := []byte(s[i:j])
			for k, c := range w {
				if c >= 'A' && c <= 'Z' {
					w[k] = c + 32
				}
			}
			return string(w)
		}
	}
	return ""
}

// containsFold reports whether s contains the lowercase ASCII word sub,
// ignoring case.
func containsFold(s, sub string) bool {
	n := len(sub)
	for i := 0; i+n <= len(s); i++ {
		j := 0
		for ; j < n; j++ {
			c := s[i+j]
			if c >= 'A' && c <= 'Z' {
				c += 32
			}
			if c != sub[j] {
				break
			}
		}
		if j == n {
			return true
		}
	}
	return false
}

// customNames returns the names in sql that may be custom run-time
// parameters (a prefix, a dot, a name: app.user_id), lowercased, as
// PostgreSQL compares them. pg_settings does not list those, so they are
// read back by name; a name that is no parameter reads back as NULL. A
// quoted name ("app"."user id") is not found.
func customNames(sql string) []string {
	var out []string
	seen := map[string]bool{}
	for i := 0; i < len(sql); {
		if !isNameByte(sql[i]) || (i > 0 && isNameByte(sql[i-1])) {
			i++
			continue
		}
		j := i
		for j < len(sql) && (isNameByte(sql[j]) || sql[j] == '.') {
			j++
		}
		if n := strings.ToLower(strings.Trim(sql[i:j], ".")); validCustomName(n) && !seen[n] && len(n) <= 128 {
			seen[n] = true
			out = append(out, n)
		}
		i = j
	}
	return out
}

func isNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '$'
}

// validCustomName reports whether n is parts of letters, digits, _ and $
// joined by dots, each starting with a letter or _ (PostgreSQL's
// valid_custom_variable_name), at least two.
func validCustomName(n string) bool {
	parts := strings.Split(n, ".")
	if len(parts) < 2 {
		return false
	}
	for _, p := range parts {
		if p == "" || p[0] >= '0' && p[0] <= '9' || p[0] == '$' {
			return false
		}
	}
	return true
}
