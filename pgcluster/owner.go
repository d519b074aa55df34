package pgcluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// serverUser is the account initdb and postgres run as. A nil *serverUser
// means the current user.
type serverUser struct {
	name   string
	uid    int
	gid    int
	groups []int // all of the user's groups, gid included
}

// lookupServerUser returns nil when the process is not root, and otherwise the
// postgres system user, since PostgreSQL refuses to run as root.
func lookupServerUser() (*serverUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, PostgreSQL must run as the postgres system user, which was not found (%v): create it (useradd --system postgres) or run as a non-root user", err)
	}
	su := &serverUser{name: u.Username}
	if su.uid, err = strconv.Atoi(u.Uid); err != nil {
		return nil, fmt.Errorf("postgres user: uid %q: %w", u.Uid, err)
	}
	if su.gid, err = strconv.Atoi(u.Gid); err != nil {
		return nil, fmt.Errorf("postgres user: gid %q: %w", u.Gid, err)
	}
	su.groups = []int{su.gid}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.Atoi(id); err == nil && !slices.Contains(su.groups, g) {
				su.groups = append(su.groups, g)
			}
		}
	}
	return su, nil
}

func (su *serverUser) credential() *syscall.Credential {
	groups := make([]uint32, len(su.groups))
	for i, g := range su.groups {
		groups[i] = uint32(g)
	}
	return &syscall.Credential{Uid: uint32(su.uid), Gid: uint32(su.gid), Groups: groups}
}

// checkReachable returns an error naming the first directory on the way to
// dir (dir included) that su cannot search.
func (su *serverUser) checkReachable(dir string) error {
	var path []string
	for p := dir; ; p = filepath.Dir(p) {
		path = append(path, p)
		if p == filepath.Dir(p) {
			break
		}
	}
	slices.Reverse(path)
	for _, p := range path {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("check access to %s: %w", dir, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			continue
		}
		perm := fi.Mode().Perm()
		var canSearch bool
		switch {
		case int(st.Uid) == su.uid:
			canSearch = perm&0o100 != 0
		case slices.Contains(su.groups, int(st.Gid)):
			canSearch = perm&0o010 != 0
		default:
			canSearch = perm&0o001 != 0
		}
		if !canSearch {
			return fmt.Errorf("%s user cannot reach %s: %s has mode %04o; choose a directory under /tmp or run chmod o+x %s",
				su.name, dir, p, perm, p)
		}
	}
	return nil
}

// chownTree gives every file under root to su, leaving symlink targets alone.
func (su *serverUser) chownTree(root string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) { // removed while we walk, e.g. a temp file
				return nil
			}
			return err
		}
		if err := os.Lchown(path, su.uid, su.gid); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
}

// mkdirAll is os.MkdirAll that also sets perm exactly on the directories it
// creates, whatever the umask.
func mkdirAll(dir string, perm fs.FileMode) error {
	var created []string
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil || p == filepath.Dir(p) {
			break
		}
		created = append(created, p)
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	for _, p := range created {
		if err := os.Chmod(p, perm); err != nil {
			return err
		}
	}
	return nil
}

// CheckReachable returns nil when the user PostgreSQL runs as can reach dir:
// always when the process is not root, and as root when the postgres system
// user can search every directory on the way. Parts of dir that do not exist
// yet are not checked (Start creates them searchable). The error says which
// directory is in the way.
func CheckReachable(dir string) error {
	su, err := lookupServerUser()
	if err != nil || su == nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for {
		if _, err := os.Stat(abs); err == nil || abs == filepath.Dir(abs) {
			break
		}
		abs = filepath.Dir(abs)
	}
	return su.checkReachable(abs)
}
