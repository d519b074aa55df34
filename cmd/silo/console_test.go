package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/silo-db/silo/api"
)

// The web console in a real browser (Debian's headless Chromium) against a
// real silo dev: data made through the API shows on each page, suspend,
// resume, drain, and starting and stopping a migration run through the UI
// change what the API says, tenant-controlled text renders as text, and
// the token stays out of cookies and URLs. A screenshot of each page is
// kept in $SILO_TEST_ARTIFACTS/console (a temporary directory if unset).
func TestConsole(t *testing.T) {
	browserPath := chromiumPath(t)
	t.Parallel()
	shots := artifactDir(t, "console")
	migDir := migrationDir(t)
	dir := devDir(t)
	var out, errOut syncBuffer
	stop := background(t, &out, &errOut, "dev", "--dir", dir, "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--shards", "2",
		"--tenant-migrations", migDir)
	url, token := waitEnv(t, dir, stop)
	c := &consoleAPI{t: t, url: url, token: token}

	// Through the API: three tenants, a key whose name is markup, a tenant
	// id that is markup (refused), and a migration run that fails on one
	// tenant whose row breaks the new constraint.
	for _, tn := range []struct{ id, shard string }{{"acme", "shard-1"}, {"globex", "shard-2"}, {"initech", "shard-1"}} {
		c.ok(201, "POST", "/v1/tenants?wait=30s", map[string]any{"id": tn.id, "shard": tn.shard})
	}
	const keyName = `<img src=x id=xss-key onerror="document.title='pwned'">`
	c.ok(201, "POST", "/v1/tenants/acme/keys", map[string]any{"name": keyName})
	var p api.Problem
	c.decode(c.call(422, "POST", "/v1/tenants?wait=30s", map[string]any{"id": `<img src=x id=xss-tenant>`}), &p)
	require.Equal(t, api.ProblemCode("EINVALID"), p.Code)
	var list api.TenantList
	c.decode(c.ok(200, "GET", "/v1/tenants", nil), &list)
	require.Len(t, list.Items, 3, "the refused id created nothing")
	c.ok(200, "POST", "/v1/tenants/initech/query", map[string]any{"sql": "INSERT INTO notes (title) VALUES ('<b>poison</b>')"})
	require.NoError(t, os.WriteFile(filepath.Join(migDir, "00002_clean_titles.sql"), []byte(
		"-- +goose Up\nALTER TABLE notes ADD CONSTRAINT notes_title_clean CHECK (title NOT LIKE '<%');\n"+
			"-- +goose Down\nALTER TABLE notes DROP CONSTRAINT notes_title_clean;\n"), 0o644))
	var run api.MigrationRun
	c.decode(c.ok(202, "POST", "/v1/migrations/runs", map[string]any{"canary": 0, "continueOnError": true}), &run)
	run = c.awaitRun(run.Id.String())
	require.Equal(t, api.MigrationRunStateFailed, run.State, "initech's row breaks the constraint")
	require.Equal(t, 1, run.Progress.Failed)
	require.Equal(t, 2, run.Progress.Done)

	b := newBrowser(t, browserPath, shots)
	b.run("open the console",
		chromedp.Navigate(url+"/console"),
		chromedp.WaitVisible(chromedp.CSS("#token")))
	require.Equal(t, "none", b.eval(`getComputedStyle(document.querySelector('#nav')).display`), "no pages before the token")
	b.screenshot("login")

	// A wrong token is refused and kept nowhere.
	b.run("log in with a wrong token",
		chromedp.SendKeys(chromedp.CSS("#token"), "wrong-token-0123456789"),
		chromedp.Click(chromedp.CSS("#login-form button[type=submit]")),
		b.until(`document.querySelector('#login-error').textContent.includes('refused the token')`))
	require.Equal(t, "", b.eval(`sessionStorage.getItem('silo.adminToken') || ''`))

	b.run("log in",
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#login-form button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("#view-shards")))
	require.Equal(t, token, b.eval(`sessionStorage.getItem('silo.adminToken')`), "the token is in sessionStorage")
	require.Equal(t, "", b.eval(`document.cookie`), "and in no cookie")
	require.NotContains(t, b.eval(`location.href`), token, "nor in the URL")
	require.NotContains(t, b.eval(`document.documentElement.outerHTML`), token, "nor in the page")

	// Shards: state, region, weight, tenants, size, breaker, connections.
	b.run("shards page", b.until(`document.querySelector('tr[data-shard="shard-1"]') !== null`))
	row := b.eval(`document.querySelector('tr[data-shard="shard-1"]').innerText`)
	require.Regexp(t, `shard-1\s+active\s+local\s+100\s+2\s+\d+(\.\d)? MiB\s+closed\s+\d+\s+\d+`, row,
		"initech's query went through this server's pool of shard-1")
	require.Regexp(t, `shard-2\s+active\s+local\s+100\s+1\s+\d+(\.\d)? MiB\s+not served`, b.eval(`document.querySelector('tr[data-shard="shard-2"]').innerText`))
	b.screenshot("shards")

	// Tenants: the list, its search and its filters.
	b.run("tenants page", b.hash("#/tenants"), b.until(`document.querySelectorAll('#tenants tr[data-tenant]').length === 3`))
	require.Equal(t, "acme,globex,initech", b.tenantRows())
	b.screenshot("tenants")
	b.run("search tenants",
		chromedp.SendKeys(chromedp.CSS("#filter-prefix"), "gl"),
		chromedp.Click(chromedp.CSS("#tenant-filters button[type=submit]")),
		b.until(`location.hash === '#/tenants?prefix=gl' && document.querySelectorAll('#tenants tr[data-tenant]').length === 1`))
	require.Equal(t, "globex", b.tenantRows())
	b.run("filter by shard", b.hash("#/tenants?shard=shard-1"), b.until(`document.querySelectorAll('#tenants tr[data-tenant]').length === 2`))
	require.Equal(t, "acme,initech", b.tenantRows())
	b.run("filter by region", b.hash("#/tenants?region=local&state=active"), b.until(`document.querySelectorAll('#tenants tr[data-tenant]').length === 3`))
	b.run("filter to nothing", b.hash("#/tenants?region=mars"), b.until(`document.querySelector('#view-tenants') && document.querySelector('#view-tenants').textContent.includes('No tenants match')`))

	// A tenant: details, keys without secrets (the markup name as text),
	// operations.
	b.run("tenant page", b.hash("#/tenants/acme"), chromedp.WaitVisible(chromedp.CSS("#view-tenant")))
	require.Equal(t, "acme", b.eval(`document.querySelector('#tenant-id').textContent`))
	require.Equal(t, "active", b.eval(`document.querySelector('#tenant-state').textContent`))
	require.Equal(t, "2", b.eval(`document.querySelector('#tenant-version').textContent`))
	require.Regexp(t, `^\d+(\.\d)? MiB$`, b.eval(`document.querySelector('#tenant-size').textContent`))
	require.Contains(t, b.eval(`document.querySelector('#tenant-keys').textContent`), keyName, "the key's name, as text")
	require.NotContains(t, b.eval(`document.querySelector('#tenant-keys').textContent`), "silo_k_", "no secret")
	require.Contains(t, b.eval(`document.querySelector('#tenant-operations').innerText`), "create\tsucceeded")
	b.noMarkup("xss-key")
	b.screenshot("tenant")

	// Suspend and resume through the UI; the API agrees.
	b.run("suspend",
		chromedp.Click(chromedp.CSS(`button[data-action="suspend"]`)),
		chromedp.Click(chromedp.CSS(`button[data-confirm="suspend"]`)),
		b.until(`document.querySelector('#tenant-state') && document.querySelector('#tenant-state').textContent === 'suspended'`))
	require.Contains(t, b.eval(`document.querySelector('#flash').textContent`), "Tenant acme is now suspended.")
	var tn api.Tenant
	c.decode(c.ok(200, "GET", "/v1/tenants/acme", nil), &tn)
	require.Equal(t, api.TenantStateSuspended, tn.State)
	require.Contains(t, b.eval(`document.querySelector('#tenant-operations').innerText`), "suspend\tsucceeded")
	b.screenshot("tenant-suspended")
	b.run("filter by state", b.hash("#/tenants?state=suspended"), b.until(`document.querySelectorAll('#tenants tr[data-tenant]').length === 1`))
	require.Equal(t, "acme", b.tenantRows())
	b.run("resume",
		b.hash("#/tenants/acme"),
		chromedp.WaitVisible(chromedp.CSS(`button[data-action="resume"]`)),
		chromedp.Click(chromedp.CSS(`button[data-action="resume"]`)),
		chromedp.Click(chromedp.CSS(`button[data-confirm="resume"]`)),
		b.until(`document.querySelector('#tenant-state') && document.querySelector('#tenant-state').textContent === 'active'`))
	c.decode(c.ok(200, "GET", "/v1/tenants/acme", nil), &tn)
	require.Equal(t, api.TenantStateActive, tn.State)

	// An id that is markup, typed into the address: the API's 404 names
	// it, and the page shows it as text.
	b.run("a tenant id that is markup", b.hash("#/tenants/"+strings.ReplaceAll(`<img src=x id=xss-route>`, " ", "%20")),
		b.until(`document.querySelector('#page-error') !== null`))
	require.Contains(t, b.eval(`document.querySelector('#page-error').textContent`), `tenant "<img src=x id=xss-route>" not found (ENOTFOUND)`)
	b.noMarkup("xss-route")

	// Migrations: the failed run, its progress and its failure.
	b.run("migrations page", b.hash("#/migrations"), chromedp.WaitVisible(chromedp.CSS("#view-migrations")))
	runs := b.eval(`document.querySelector('#runs').innerText`)
	require.Contains(t, runs, run.Id.String()[:8]+"\tfailed\tup to 2")
	require.Contains(t, runs, "2/3 done, 1 failed")
	failures := b.eval(`document.querySelector('#failures').innerText`)
	require.Contains(t, failures, "initech\tshard-1\t"+run.Id.String()[:8]+"\t1\t")
	require.Contains(t, failures, "notes_title_clean")
	require.Equal(t, "1", b.eval(`document.querySelector('#migrations-behind').textContent`))
	b.screenshot("migrations")

	// Audit: the UI's changes, by the admin.
	b.run("audit page", b.hash("#/audit?target=tenant%2Facme"), b.until(`document.querySelectorAll('#audit tbody tr').length >= 4`))
	audit := b.eval(`document.querySelector('#audit').innerText`)
	for _, action := range []string{"tenant.create", "tenant.key.create", "tenant.suspend", "tenant.resume"} {
		require.Contains(t, audit, "\tadmin\t"+action+"\ttenant/acme\tok")
	}
	require.Contains(t, audit, `<img src=x id=xss-key`, "parameters as text")
	b.noMarkup("xss-key")
	b.run("the whole audit log", b.hash("#/audit"), b.until(`document.querySelectorAll('#audit tbody tr').length > 4`))
	b.screenshot("audit")

	// Drain shard-2 through the UI: globex moves off, and the moves page
	// shows it, in flight or done.
	b.run("drain shard-2",
		b.hash("#/shards"),
		chromedp.WaitVisible(chromedp.CSS(`button[data-action="drain-shard-2"]`)),
		chromedp.Click(chromedp.CSS(`button[data-action="drain-shard-2"]`)),
		chromedp.Click(chromedp.CSS(`button[data-confirm="drain-shard-2"]`)),
		b.until(`document.querySelector('#flash').textContent.includes('Shard shard-2 is draining')`))
	var sh api.Shard
	c.decode(c.ok(200, "GET", "/v1/shards/shard-2", nil), &sh)
	require.Equal(t, api.ShardStateDraining, sh.State)
	b.run("moves page", b.hash("#/moves"), b.until(`document.querySelector('tr[data-operation]') !== null`))
	moves := b.eval(`document.querySelector('#view-moves').innerText`)
	require.Contains(t, moves, "globex\tshard-2\tshard-1\t")
	b.screenshot("moves")
	c.awaitTenant("globex", func(t api.Tenant) bool { return t.Shard == "shard-1" && t.State == api.TenantStateActive })
	b.run("the move done", b.hash("#/shards"), b.hash("#/moves"),
		b.until(`document.querySelector('#moves-recent') && document.querySelector('#moves-recent').innerText.includes('succeeded')`))
	require.Contains(t, b.eval(`document.querySelector('#moves-recent').innerText`), "globex\tshard-2\tshard-1\tsucceeded")
	b.screenshot("moves-done")

	// Start a run through the UI and stop it while it is in progress: a
	// migration that takes a while, and initech's row fixed.
	c.ok(200, "POST", "/v1/tenants/initech/query", map[string]any{"sql": "UPDATE notes SET title = 'clean'"})
	require.NoError(t, os.WriteFile(filepath.Join(migDir, "00003_slow.sql"), []byte(
		"-- +goose Up\nSELECT pg_sleep(4);\n-- +goose Down\nSELECT 1;\n"), 0o644))
	b.run("start a run",
		b.hash("#/migrations"),
		chromedp.WaitVisible(chromedp.CSS("#start-run-button")),
		chromedp.Click(chromedp.CSS("#start-run-button")),
		b.until(`document.querySelector('#flash').textContent.includes('started: up to version 3')`),
		b.until(`document.querySelector('button[data-action="stop-run"]') !== null`))
	var runs2 api.MigrationRunList
	c.decode(c.ok(200, "GET", "/v1/migrations/runs", nil), &runs2)
	require.Len(t, runs2.Items, 2)
	second := runs2.Items[0]
	require.EqualValues(t, 3, second.TargetVersion)
	b.screenshot("migrations-running")
	b.run("stop the run",
		chromedp.Click(chromedp.CSS(`button[data-action="stop-run"]`)),
		chromedp.Click(chromedp.CSS(`button[data-confirm="stop-run"]`)),
		b.until(`document.querySelector('#flash').textContent.includes('Run `+second.Id.String()+` is ')`))
	second = c.awaitRun(second.Id.String())
	require.Equal(t, api.MigrationRunStateStopped, second.State, "error: %v", second.Error)
	b.run("the run stopped", b.until(`document.querySelector('tr[data-run="`+second.Id.String()+`"]') !== null &&
		document.querySelector('tr[data-run="`+second.Id.String()+`"]').innerText.includes('stopped')`))
	b.screenshot("migrations-stopped")

	// Logging out forgets the token.
	b.run("log out", chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#token")))
	require.Equal(t, "", b.eval(`sessionStorage.getItem('silo.adminToken') || ''`))
	require.Equal(t, "", b.eval(`document.querySelector('#page').textContent`), "no data left on the page")

	b.checkErrors()
	require.NoError(t, stop())
}

// chromiumPath finds Chromium on PATH (Debian's package is chromium). Without
// it the test is skipped, or fails under CI.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if v := strings.ToLower(os.Getenv("CI")); v != "" && v != "false" && v != "0" {
		t.Fatal("the console test needs Chromium: scripts/install-test-clients.sh installs it (apt-get install chromium)")
	}
	t.Skip("the console test needs Chromium on PATH: apt-get install chromium, or scripts/install-test-clients.sh as root")
	return ""
}

// artifactDir is where a test keeps files worth looking at afterwards:
// $SILO_TEST_ARTIFACTS/name, or a directory of the test's own that goes
// away with it.
func artifactDir(t *testing.T, name string) string {
	t.Helper()
	root := os.Getenv("SILO_TEST_ARTIFACTS")
	if root == "" {
		root = t.TempDir()
	}
	dir := filepath.Join(root, name)
	require.NoError(t, os.MkdirAll(dir, 0o755))
	return dir
}

// consoleAPI calls the API as the test's own client, to arrange data and
// to check what the UI did.
type consoleAPI struct {
	t          *testing.T
	url, token string
}

func (c *consoleAPI) call(status int, method, path string, body any) []byte {
	c.t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(c.t, err)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.url+path, r)
	require.NoError(c.t, err)
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	require.Equal(c.t, status, resp.StatusCode, "%s %s: %s", method, path, got)
	return got
}

// ok is call for a request that must succeed with status.
func (c *consoleAPI) ok(status int, method, path string, body any) []byte {
	c.t.Helper()
	return c.call(status, method, path, body)
}

func (c *consoleAPI) decode(b []byte, v any) {
	c.t.Helper()
	require.NoError(c.t, json.Unmarshal(b, v), "%s", b)
}

// awaitRun polls a migration run until it is no longer in progress.
func (c *consoleAPI) awaitRun(id string) api.MigrationRun {
	c.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		var run api.MigrationRun
		c.decode(c.ok(200, "GET", "/v1/migrations/runs/"+id, nil), &run)
		switch run.State {
		case api.MigrationRunStatePreparing, api.MigrationRunStateCanary, api.MigrationRunStateRunning:
		default:
			return run
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("run %s still %s after 90s", id, run.State)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// awaitTenant polls a tenant until cond holds.
func (c *consoleAPI) awaitTenant(id string, cond func(api.Tenant) bool) {
	c.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		var tn api.Tenant
		c.decode(c.ok(200, "GET", "/v1/tenants/"+id, nil), &tn)
		if cond(tn) {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("tenant %s not as expected after 90s: %+v", id, tn)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// browser is one headless Chromium tab, with what its pages reported.
type browser struct {
	t     *testing.T
	ctx   context.Context
	shots string

	mu     sync.Mutex
	errors []string // exceptions, and policy violations
}

func newBrowser(t *testing.T, path, shots string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // as root, Chromium's sandbox refuses to start
		chromedp.WindowSize(1400, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	b := &browser{t: t, shots: shots}
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithListener(b.listen))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b.ctx = ctx
	// The first run starts the browser, which lives as long as its
	// context: this one, without a timeout (run's would end it).
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate("about:blank")), "start Chromium")
	return b
}

// listen keeps what the pages report that a working console never does.
func (b *browser) listen(ev any) {
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown: // uncaught, in promises too
		d := ev.ExceptionDetails
		msg := d.Text
		if d.Exception != nil {
			msg += " " + d.Exception.Description
		}
		b.record(fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber+1, msg))
	case *cdplog.EventEntryAdded:
		// The API's 401 and 404 are logged as network errors, and are
		// expected; a policy violation never is.
		if ev.Entry.Source == cdplog.EntrySourceSecurity || strings.Contains(ev.Entry.Text, "Content Security Policy") {
			b.record("policy: " + ev.Entry.Text)
		}
	}
}

func (b *browser) record(msg string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.errors = append(b.errors, msg)
}

func (b *browser) reported() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errors...)
}

// checkErrors fails the test if a page threw or broke the policy.
func (b *browser) checkErrors() {
	b.t.Helper()
	require.Empty(b.t, b.reported(), "the console's pages reported errors")
}

// run runs steps within 60 seconds; what says what they do.
func (b *browser) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		page, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ''`))
		b.t.Fatalf("%s: %v\npage:\n%s\nreported: %v", what, err, page, b.reported())
	}
}

// hash shows a page of the console, as a click on a link would.
func (b *browser) hash(h string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf("location.hash = %q", h))
}

// until waits for a JavaScript expression to be true.
func (b *browser) until(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(45*time.Second))
}

// eval returns the string a JavaScript expression evaluates to.
func (b *browser) eval(expr string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	require.NoError(b.t, err, "evaluate %s", expr)
	return s
}

// tenantRows is the ids of the tenant list's rows, comma-separated.
func (b *browser) tenantRows() string {
	b.t.Helper()
	return b.eval(`[...document.querySelectorAll('#tenants tr[data-tenant]')].map((r) => r.dataset.tenant).join(',')`)
}

// noMarkup checks that tenant-controlled text became no element: none has
// the id it carries, the page has no image, and no handler ran.
func (b *browser) noMarkup(id string) {
	b.t.Helper()
	require.Equal(b.t, "none", b.eval(fmt.Sprintf(`document.getElementById(%q) ? 'found' : 'none'`, id)))
	require.Equal(b.t, "0", b.eval(`String(document.querySelectorAll('img').length)`))
	require.NotEqual(b.t, "pwned", b.eval(`document.title`))
}

// screenshot saves the whole page as name.png, once it shows no value
// that JavaScript failed to find.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	require.NotRegexp(b.t, `\b(undefined|null|NaN)\b|\[object `, b.eval(`document.querySelector('main').innerText`), "page %s", name)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(b.t, err, "screenshot %s", name)
	path := filepath.Join(b.shots, name+".png")
	require.NoError(b.t, os.WriteFile(path, png, 0o644))
	b.t.Logf("screenshot: %s", path)
}
