-- PL/SQL package hierarchy_pkg
create or replace package hierarchy_pkg as end;
