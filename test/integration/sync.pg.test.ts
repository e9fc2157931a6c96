import { describePg } from '../helpers/pg.ts';
import { syncSuite } from './sync.suite.ts';

describePg('postgres', () => {
  syncSuite('postgres');
});
