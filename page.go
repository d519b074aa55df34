package silo

// Page asks for one page of a list: at most Limit items after Cursor, an
// opaque string returned by the previous page ("" for the first).
type Page struct {
	Limit  int
	Cursor string
}

// Page size limits.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
)

// List is one page of results; NextCursor is "" on the last page.
type List[T any] struct {
	Items      []T
	NextCursor string
}
