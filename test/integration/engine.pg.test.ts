import { describePg } from '../helpers/pg.ts';
import { engineSuite } from './engine.suite.ts';

describePg('postgres', () => {
  engineSuite('postgres');
});
