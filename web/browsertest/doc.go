// Package browsertest holds the dashboard's browser test: it builds the
// ballot binary, starts a real `ballot dev` cluster on ports the operating
// system chose, and drives its dashboard in headless Chromium (through
// the DevTools protocol, with github.com/chromedp/chromedp). It has no
// code of its own; .ci/run's dashboard stage runs it.
package browsertest
