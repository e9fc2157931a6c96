import { describePg } from '../helpers/pg.ts';
import { httpSuite } from './http.suite.ts';

describePg('postgres', () => {
  httpSuite('postgres');
});
