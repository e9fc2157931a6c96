import { describePg } from '../helpers/pg.ts';
import { sessionsSuite } from './sessions.suite.ts';

describePg('postgres', () => {
  sessionsSuite('postgres');
});
