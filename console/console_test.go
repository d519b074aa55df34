package console_test

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/console"
)

func TestConsoleHandler(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(console.Handler())
	t.Cleanup(srv.Close)
	for _, tc := range []struct {
		method, path string
		status       int
		contentType  string
		contains     string
	}{
		{"GET", "/console", 200, "text/html; charset=utf-8", `<script src="/console/app.js" defer></script>`},
		{"GET", "/console/", 200, "text/html; charset=utf-8", `<form id="login-form"`},
		{"GET", "/console/index.html", 200, "text/html; charset=utf-8", `<title>Silo console</title>`},
		{"GET", "/console/app.js", 200, "text/javascript; charset=utf-8", `sessionStorage`},
		{"GET", "/console/style.css", 200, "text/css; charset=utf-8", `:root`},
		{"HEAD", "/console/app.js", 200, "text/javascript; charset=utf-8", ""},
		{"GET", "/console/nope.js", 404, "text/plain; charset=utf-8", "not found"},
		{"GET", "/console/../console.go", 404, "text/plain; charset=utf-8", "not found"},
		{"GET", "/console/%2e%2e/console.go", 404, "text/plain; charset=utf-8", "not found"},
		{"GET", "/consoleapp.js", 404, "text/plain; charset=utf-8", "not found"},
		{"GET", "/console/.", 404, "text/plain; charset=utf-8", "not found"},
		{"POST", "/console", 405, "text/plain; charset=utf-8", "not allowed"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			require.NoError(t, err)
			// The client would clean "..": send the path as written.
			req.URL.Opaque = tc.path
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, tc.status, resp.StatusCode, "body: %s", body)
			require.Equal(t, tc.contentType, resp.Header.Get("Content-Type"))
			require.Contains(t, string(body), tc.contains)
			// Every answer, errors too, carries the policy.
			require.Equal(t, console.Policy, resp.Header.Get("Content-Security-Policy"))
			require.Contains(t, console.Policy, "default-src 'self'")
			require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))
			require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
			require.Equal(t, "no-referrer", resp.Header.Get("Referrer-Policy"))
			require.Empty(t, resp.Header.Values("Set-Cookie"))
		})
	}
}

// The assets keep the rules the policy cannot check: no HTML built from
// strings, nothing from another origin, the token in sessionStorage only.
func TestConsoleAssets(t *testing.T) {
	t.Parallel()
	files := map[string]string{}
	require.NoError(t, fs.WalkDir(console.Assets, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(console.Assets, path)
		files[path] = string(b)
		return err
	}))
	require.ElementsMatch(t, []string{"index.html", "app.js", "style.css"}, keys(files))

	for name, text := range files {
		for _, banned := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
			"new Function", "localStorage", "document.cookie", "http://", "https://", "//cdn", "@import"} {
			require.NotContains(t, text, banned, "%s", name)
		}
	}
	html := files["index.html"]
	scripts := regexp.MustCompile(`<script\b[^>]*>`).FindAllString(html, -1)
	require.Equal(t, []string{`<script src="/console/app.js" defer>`}, scripts, "one script, from a file")
	require.Equal(t, 1, strings.Count(html, "</script>"))
	require.Contains(t, html, `<script src="/console/app.js" defer></script>`, "nothing inline")
	require.NotRegexp(t, `(?i)\son[a-z]+\s*=`, html, "no inline event handlers")
	require.NotRegexp(t, `(?i)\sstyle\s*=|<style`, html, "no inline style")
	// The token field has no name, so no form submission can carry it.
	require.Regexp(t, `<input id="token" type="password"[^>]*>`, html)
	require.NotRegexp(t, `<input id="token"[^>]*\bname=`, html)

	js := files["app.js"]
	require.Equal(t, 1, strings.Count(js, "sessionStorage.setItem("), "the token is stored in one place")
	require.Contains(t, js, "Authorization: 'Bearer ' + token")
}

func keys(m map[string]string) []string {
	out := []string{}
	for k := range m {
		out = append(out, k)
	}
	return out
}
