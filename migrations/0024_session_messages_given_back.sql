-- A commit that ends without success (failed for good, or cancelled while pending) gives its
-- messages back to the live session once (src/sessions/sessions.ts, undoCommit): they are
-- marked, and a commit of marked messages that fails again keeps them archived, so that a
-- commit failing on its content cannot come back with every later commit. A constant
-- default: no table rewrite.
alter table session_messages add column given_back boolean not null default false;
