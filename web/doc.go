// Package web is the dashboard every ballot member serves on its HTTP
// port, and ballot dev serves for its three members: a page that shows
// the cluster as it runs, with no build step and nothing fetched from
// elsewhere (the page, its script and style are embedded with go:embed).
//
// # What it shows
//
// The cluster table (each member's role, term, commit and applied index,
// last contact with the leader, readiness, key count and size), each
// member's log as a strip of entries coloured by term with its commit,
// applied and snapshot marks, messages travelling between members
// (appends, votes, heartbeats) in the spirit of RaftScope, and a timeline
// of elections, leader changes, membership changes, snapshots, slow
// fsyncs, dropped messages and alarms. Keys are counted and sized, their
// names and values never shown.
//
// # Where the data comes from
//
// A Tap is a node.Observer. It keeps what the node told it that the page
// needs (the terms of the entries written, when each peer was last
// heard from, the recent timeline) and turns sent messages and timeline
// events into a server-sent event stream (/api/events). Every message
// event passes a token bucket (TapConfig.MessagesPerSecond, burst
// MessageBurst): under load the stream is a sample and each event says
// how many messages were skipped before it. Timeline events have a bucket
// of their own. Every subscriber's queue is bounded and drops what does
// not fit; the number of streams is bounded. So the dashboard never slows
// the member: with no page open a message costs the node one atomic load.
//
// /api/state is this member's state; /api/cluster gathers it from every
// member the handler knows (Config.Peers, each asked over HTTP within a
// second), and /api/members/{name}/events relays each member's stream, so
// the page talks to one origin only.
//
// # Security
//
// The dashboard is served on loopback by default. CheckExposure refuses an
// address that is not loopback unless a token is set; with a token every
// request must carry it (Authorization: Bearer, or ?token= once, then a
// SameSite=Strict cookie). ballot dev's controls (Config.Dev) exist only
// in ballot dev, and each needs a custom request header, which a page of
// another origin cannot send without a CORS preflight that is never
// answered.
package web
