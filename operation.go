package silo

import "time"

// OperationKind names a durable lifecycle operation.
type OperationKind string

// Operation kinds.
const (
	OpCreate  OperationKind = "create"
	OpSuspend OperationKind = "suspend"
	OpResume  OperationKind = "resume"
	OpDelete  OperationKind = "delete"
	OpPurge   OperationKind = "purge"
	OpMove    OperationKind = "move"
	// OpImport is a restore of an archive into a tenant (Import): it runs
	// within its request, and is recorded once it has ended.
	OpImport OperationKind = "import"
)

// Valid reports whether k is a known operation kind.
func (k OperationKind) Valid() bool {
	switch k {
	case OpCreate, OpSuspend, OpResume, OpDelete, OpPurge, OpMove, OpImport:
		return true
	}
	return false
}

// OperationState is where an operation stands.
type OperationState string

// Operation states. A running operation is finished by the server that
// started it or, if that server dies, resumed by another.
const (
	OpRunning   OperationState = "running"
	OpSucceeded OperationState = "succeeded"
	OpFailed    OperationState = "failed"
)

// Valid reports whether s is a known operation state.
func (s OperationState) Valid() bool {
	switch s {
	case OpRunning, OpSucceeded, OpFailed:
		return true
	}
	return false
}

// Operation is a durable, resumable change to a tenant, made of idempotent
// steps, recorded in the catalog as it runs.
type Operation struct {
	ID         string
	Kind       OperationKind
	TenantID   string
	State      OperationState
	Steps      []OperationStep
	ErrorCode  string // when failed
	Error      string // when failed: the user-facing message
	CreatedAt  time.Time
	UpdatedAt  time.Time
	FinishedAt *time.Time
	// Move is what a move has chosen and measured so far; nil for other
	// kinds.
	Move *MoveOutcome
}

// MoveOutcome is how a move carries a tenant's data and the write pause
// its cutover caused.
type MoveOutcome struct {
	Path       string // "live" (logical replication) or "dump" (copied while paused); "" until chosen
	PathReason string
	PauseMs    int64 // once cut over
	// CopiedBytes is how much of the tenant's rows (as COPY text) the
	// copy has carried so far, recorded about once a second.
	CopiedBytes int64
}

// OperationStep is one idempotent step of an operation.
type OperationStep struct {
	Name       string         `json:"name"`
	State      OperationState `json:"state"`
	Attempts   int            `json:"attempts"`
	StartedAt  time.Time      `json:"startedAt"`
	FinishedAt *time.Time     `json:"finishedAt,omitempty"`
	Error      string         `json:"error,omitempty"`
}

// Done reports whether the operation has finished, either way.
func (o *Operation) Done() bool { return o.State != OpRunning }
