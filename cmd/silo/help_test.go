package main

import (
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
)

// Every command a --help text shows names a command that exists, with
// flags it takes; its examples, as many arguments as it accepts too (a
// `silo ...` in a description may name a command without its arguments):
// a renamed flag or command fails here rather than in a user's terminal.
func TestHelpExamplesParse(t *testing.T) {
	root := newRootCmd(io.Discard, io.Discard)
	seen := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, ex := range helpExamples(c) {
			seen++
			t.Run(c.CommandPath()+": "+ex.line, func(t *testing.T) {
				args := shellWords(strings.TrimPrefix(ex.line, "silo "))
				// A fresh tree each time: parsing flags sets them.
				fresh := newRootCmd(io.Discard, io.Discard)
				sub, rest, err := fresh.Traverse(args)
				require.NoError(t, err)
				require.NotEqual(t, fresh.Name(), sub.Name(), "no such command")
				for _, a := range rest {
					if name, ok := strings.CutPrefix(a, "--"); ok {
						name, _, _ = strings.Cut(name, "=")
						require.NotNil(t, sub.Flags().Lookup(name), "%q has no flag --%s", sub.CommandPath(), name)
					}
				}
				if !ex.example {
					return
				}
				require.NoError(t, sub.ParseFlags(rest), "flags of %q", sub.CommandPath())
				if sub.Args != nil && !sub.HasSubCommands() {
					require.NoError(t, sub.Args(sub, sub.Flags().Args()), "arguments of %q", sub.CommandPath())
				}
			})
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	require.Greater(t, seen, 15, "the help texts show commands")
}

var helpCommandRE = regexp.MustCompile("`(silo [^`]+)`")

// helpExample is a silo command a help text shows: in its examples, or
// named in its description.
type helpExample struct {
	line    string
	example bool
}

// helpExamples are the silo commands a command's help shows, cut at a
// shell redirection or pipe.
func helpExamples(c *cobra.Command) []helpExample {
	var out []helpExample
	for _, m := range helpCommandRE.FindAllStringSubmatch(c.Long, -1) {
		out = append(out, helpExample{line: m[1]})
	}
	for _, l := range strings.Split(c.Example, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "silo ") {
			if i := strings.Index(l, " #"); i >= 0 {
				l = l[:i]
			}
			out = append(out, helpExample{line: l, example: true})
		}
	}
	for i, ex := range out {
		if j := strings.IndexAny(ex.line, "|>"); j >= 0 {
			out[i].line = strings.TrimSpace(ex.line[:j])
		}
	}
	return out
}

// shellWords splits a command line as a shell does for plain words and
// single or double quotes.
func shellWords(s string) []string {
	var words []string
	var cur strings.Builder
	var quote rune
	in := false
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}
