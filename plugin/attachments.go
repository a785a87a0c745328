package plugin

// Attachments hears which container namespaces the endpoints joined:
// Docker names a container's namespace (its sandbox key) only in Join.
// svclb.LB is the implementation; its calls must not block.
type Attachments interface {
	// Attach: endpoint eid of network nid joined the container whose
	// namespace Docker calls sandboxKey.
	Attach(nid, eid, sandboxKey string)
	// Detach: endpoint eid of network nid left its container.
	Detach(nid, eid string)
}

type attachmentsHolder struct{ a Attachments }

// SetAttachments makes the handler tell a of every successful Join and
// Leave from now on. Call it before SetDriver, so no Join is missed.
func (h *Handler) SetAttachments(a Attachments) { h.attachments.Store(&attachmentsHolder{a}) }

func (h *Handler) attached(nid, eid, sandboxKey string) {
	if p := h.attachments.Load(); p != nil {
		p.a.Attach(nid, eid, sandboxKey)
	}
}

func (h *Handler) detached(nid, eid string) {
	if p := h.attachments.Load(); p != nil {
		p.a.Detach(nid, eid)
	}
}
