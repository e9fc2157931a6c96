import { sessionsSuite } from './sessions.suite.ts';

sessionsSuite('pglite');
