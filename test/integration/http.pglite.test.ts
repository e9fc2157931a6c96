import { httpSuite } from './http.suite.ts';

httpSuite('pglite');
