package pgarchive

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Archive versions (pg_backup_archiver.h, MAKE_ARCHIVE_VERSION).
const (
	vers1_14 = 1<<16 | 14<<8 // tableam in each TOC entry; pg_dump 12 to 15
	vers1_15 = 1<<16 | 15<<8 // compression algorithm byte in the header; 16
	vers1_16 = 1<<16 | 16<<8 // relkind in each TOC entry; 17 and 18
	versMax  = 1<<16 | 16<<8 | 255

	formatCustom = 1 // archCustom, pg_backup.h

	// Offset flags of a TOC entry's data (K_OFFSET_*).
	offsetPosNotSet = 1
	offsetPosSet    = 2
	offsetNoData    = 3

	// Bounds that only a corrupt archive exceeds: pg_dump writes ints of
	// sizeof(int) and offsets of sizeof(pgoff_t).
	maxIntSize = 8
	maxOffSize = 8
	maxString  = 1 << 30
)

// ErrUnsupported is returned, wrapped, for an archive DropOwners does not
// know how to read: not a custom-format archive, or a version other than
// 1.14 to 1.16.
var ErrUnsupported = errors.New("unsupported archive")

// DropOwners copies the custom-format archive read from r to w with the
// owner of every TOC entry blanked, so that pg_restore issues no ALTER ...
// OWNER TO (it skips an empty owner). The header and the rest of each entry
// are copied unchanged, and the data blocks byte for byte. An archive
// written to a file has its data blocks' positions in the TOC; they move by
// as many bytes as the owners took and are adjusted.
//
// DropOwners holds the header and TOC in memory (a few hundred bytes an
// entry) and streams the data. It returns an error wrapping ErrUnsupported
// for an archive it does not know, before it writes anything; an error
// reading r or writing w is returned as is.
func DropOwners(w io.Writer, r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	a := &archive{r: br}
	if err := a.rewriteHead(); err != nil {
		return err
	}
	if err := a.rewriteToc(); err != nil {
		return err
	}
	if err := a.fixOffsets(); err != nil {
		return err
	}
	if _, err := w.Write(a.out.Bytes()); err != nil {
		return err
	}
	_, err := br.WriteTo(w)
	return err
}

// archive reads a header and TOC, writing what it reads to out unless told
// otherwise.
type archive struct {
	r       *bufio.Reader
	in      int64        // bytes read from r
	out     bytes.Buffer // the header and TOC as rewritten
	version int
	intSize int
	offSize int
	offsets []int // where in out each set data offset starts
}

func (a *archive) rewriteHead() error {
	magic := make([]byte, 5)
	if err := a.read(magic); err != nil {
		return err
	}
	if string(magic) != "PGDMP" {
		return fmt.Errorf("%w: no PGDMP magic string: not a pg_dump archive", ErrUnsupported)
	}
	var vers [6]byte // major, minor, revision, int size, offset size, format
	if err := a.read(vers[:]); err != nil {
		return err
	}
	a.version = int(vers[0])<<16 | int(vers[1])<<8 | int(vers[2])
	if a.version < vers1_14 || a.version > versMax {
		return fmt.Errorf("%w: archive version %d.%d is not one of 1.14 to 1.16 (pg_dump 12 to 18)",
			ErrUnsupported, vers[0], vers[1])
	}
	a.intSize, a.offSize = int(vers[3]), int(vers[4])
	if a.intSize < 1 || a.intSize > maxIntSize || a.offSize < 1 || a.offSize > maxOffSize {
		return fmt.Errorf("%w: integer size %d, offset size %d", ErrUnsupported, a.intSize, a.offSize)
	}
	if vers[5] != formatCustom {
		return fmt.Errorf("%w: format %d, not custom (pg_dump --format=custom)", ErrUnsupported, vers[5])
	}
	if a.version >= vers1_15 {
		if err := a.read(make([]byte, 1)); err != nil { // compression algorithm
			return err
		}
	} else if _, err := a.int(); err != nil { // compression level
		return err
	}
	for range 7 { // creation time: sec, min, hour, mday, mon, year, isdst
		if _, err := a.int(); err != nil {
			return err
		}
	}
	for range 3 { // database name, server version, pg_dump version
		if _, _, err := a.str(); err != nil {
			return err
		}
	}
	return nil
}

func (a *archive) rewriteToc() error {
	count, err := a.int()
	if err != nil {
		return err
	}
	if count < 0 {
		return fmt.Errorf("%w: TOC of %d entries", ErrUnsupported, count)
	}
	for i := range count {
		if err := a.rewriteEntry(); err != nil {
			return fmt.Errorf("TOC entry %d of %d: %w", i+1, count, err)
		}
	}
	return nil
}

// rewriteEntry copies one TOC entry (ReadToc, then the custom format's
// _ReadExtraToc), its owner blanked.
func (a *archive) rewriteEntry() error {
	for range 2 { // dump id, had dumper
		if _, err := a.int(); err != nil {
			return err
		}
	}
	// Table OID, OID, tag, description; then the section.
	for range 4 {
		if _, _, err := a.str(); err != nil {
			return err
		}
	}
	if _, err := a.int(); err != nil {
		return err
	}
	// Definition, DROP, COPY, schema, tablespace, table access method.
	for range 6 {
		if _, _, err := a.str(); err != nil {
			return err
		}
	}
	if a.version >= vers1_16 {
		if _, err := a.int(); err != nil { // relkind
			return err
		}
	}
	if err := a.blankStr(); err != nil { // owner
		return err
	}
	if _, _, err := a.str(); err != nil { // "false": WITH OIDS
		return err
	}
	for { // dependencies, up to a null string
		_, null, err := a.str()
		if err != nil {
			return err
		}
		if null {
			break
		}
	}
	flag := make([]byte, 1)
	if err := a.read(flag); err != nil {
		return err
	}
	switch flag[0] {
	case offsetPosSet:
		a.offsets = append(a.offsets, a.out.Len())
	case offsetPosNotSet, offsetNoData:
	default:
		return fmt.Errorf("%w: data offset flag %d", ErrUnsupported, flag[0])
	}
	return a.read(make([]byte, a.offSize))
}

// fixOffsets moves the data positions recorded in the TOC by what the
// rewrite saved: every data block follows the TOC.
func (a *archive) fixOffsets() error {
	delta := int64(a.out.Len()) - a.in
	b := a.out.Bytes()
	for _, at := range a.offsets {
		var off uint64
		for i := range a.offSize {
			off |= uint64(b[at+i]) << (8 * i)
		}
		moved := int64(off) + delta
		if int64(off) < a.in || moved < int64(a.out.Len()) {
			return fmt.Errorf("%w: data offset %d inside the header or TOC", ErrUnsupported, off)
		}
		for i := range a.offSize {
			b[at+i] = byte(uint64(moved) >> (8 * i))
		}
	}
	return nil
}

// read fills b from the archive and copies it to out.
func (a *archive) read(b []byte) error {
	if err := a.skip(b); err != nil {
		return err
	}
	a.out.Write(b)
	return nil
}

// skip fills b from the archive without copying it.
func (a *archive) skip(b []byte) error {
	n, err := io.ReadFull(a.r, b)
	a.in += int64(n)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("archive ends in its header or TOC: %w", io.ErrUnexpectedEOF)
	}
	return err
}

// int reads and copies an integer (WriteInt: a sign byte, then intSize bytes
// least significant first).
func (a *archive) int() (int64, error) {
	return a.readInt(a.read)
}

func (a *archive) readInt(read func([]byte) error) (int64, error) {
	b := make([]byte, 1+a.intSize)
	if err := read(b); err != nil {
		return 0, err
	}
	var v int64
	for i := a.intSize; i >= 1; i-- {
		v = v<<8 | int64(b[i])
	}
	if b[0] != 0 {
		v = -v
	}
	return v, nil
}

// str reads and copies a string (WriteStr: its length as an integer, -1 for
// NULL, then its bytes), saying whether it was NULL.
func (a *archive) str() (s string, null bool, err error) {
	return a.readStr(a.read)
}

// blankStr reads a string and writes an empty one in its place.
func (a *archive) blankStr() error {
	if _, _, err := a.readStr(a.skip); err != nil {
		return err
	}
	a.out.Write(make([]byte, 1+a.intSize)) // length 0
	return nil
}

func (a *archive) readStr(read func([]byte) error) (string, bool, error) {
	n, err := a.readInt(read)
	if err != nil {
		return "", false, err
	}
	if n < 0 {
		return "", true, nil
	}
	if n > maxString {
		return "", false, fmt.Errorf("%w: string of %d bytes", ErrUnsupported, n)
	}
	b := make([]byte, n)
	if err := read(b); err != nil {
		return "", false, err
	}
	return string(b), false, nil
}
