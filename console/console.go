package console

import (
	"bytes"
	"embed"
	"io/fs"
	"net/http"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// Assets are the console's files: index.html, app.js and style.css.
var Assets = func() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	return sub
}()

// Prefix is the path the console is served under.
const Prefix = "/console"

// Policy is the Content-Security-Policy of every console response: scripts,
// styles, images and API calls from the server itself and nothing else (no
// inline script or style, no CDN), no <base> or plugin, no form submitted
// anywhere (the login form is handled by script, so a token can never land
// in a URL), and no framing.
const Policy = "default-src 'self'; base-uri 'none'; object-src 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the console's files under Prefix: Prefix and Prefix/
// answer index.html, Prefix/NAME the file NAME, anything else 404. It needs
// no token: the files hold no data. It is safe for concurrent use.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", Policy)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		// Small files, read again on each load: a new binary's console is
		// never mixed with an old one's cached script.
		h.Set("Cache-Control", "no-cache")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name, ok := strings.CutPrefix(r.URL.Path, Prefix)
		if !ok || (name != "" && name[0] != '/') {
			http.NotFound(w, r)
			return
		}
		if name = strings.TrimPrefix(name, "/"); name == "" {
			name = "index.html"
		}
		b, err := fs.ReadFile(Assets, name) // fs.ValidPath refuses "..", and directories fail to read
		if err != nil {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
	})
}
