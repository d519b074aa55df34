// Package pgarchive rewrites pg_dump's custom-format archives as they stream.
//
// A custom archive is a header, a table of contents (TOC) and the data
// blocks. Each TOC entry names the role that owned the object, and
// pg_restore turns that name into ALTER ... OWNER TO: a restore on a server
// without the role fails on each one, and pg_dump ignores --no-owner for
// archive formats. DropOwners blanks the owners in the TOC and copies the
// data verbatim, so a plain pg_restore leaves the objects to whoever runs it.
//
// The layout follows PostgreSQL's src/bin/pg_dump/pg_backup_archiver.c
// (WriteHead/ReadHead, WriteToc/ReadToc, WriteInt/ReadInt, WriteStr/ReadStr)
// and pg_backup_custom.c (_WriteExtraToc/_ReadExtraToc). It knows the
// archive versions 1.14 (pg_dump 12 to 15), 1.15 (16) and 1.16 (17 and 18),
// and refuses any other with ErrUnsupported rather than guess at a layout.
package pgarchive
